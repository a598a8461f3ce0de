"""Amazon EC2 driver (``--driver aws``, alias ``amazonec2``): Docker Machine's amazonec2 flags, without its leaks.

What it fixes over docker-machine's driver:

* every resource it makes (imported key pair, security group, instance) is recorded in the create ledger and undone
  in reverse on failure, each undo waiting until EC2 confirms, and ``rm`` removes the security group too;
* the security group it creates opens only SSH (and the TLS API port when the API is exposed over TCP) from the
  sources in ``--aws-allow-cidr``; groups the user names are used as they are;
* the SSH host key is generated here and injected through cloud-init, so the first connection is already verified;
* waits have a configurable timeout and say what they are waiting for.

EC2 is eventually consistent: for a while after ``RunInstances``, ``CreateSecurityGroup`` or ``ImportKeyPair`` it may
answer NotFound for the id it just returned, and its filtered Describe lists may not show the resource yet. So the
driver notes when each create request left (``requested_at``, set as botocore sends it), treats NotFound within
``--aws-consistency-window`` of that as "not visible yet" rather than "gone", retries calls that name the new
resource, and undoes by the recorded id, waiting until EC2 shows each deletion. The instance is launched with a
unique ``machines:id`` tag (and that id as its idempotency token), so an undo or ``rm`` finds it even when the create
was interrupted while ``RunInstances`` was in flight; a rollback that cannot see such an instance says so instead of
reporting success.
"""

from __future__ import annotations

import functools
import gzip
import ipaddress
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from machines.drivers.base import Driver, Flag, Ledger, SSHDetails, State
from machines.drivers.cloudinit import (
    cloud_config,
    generate_host_key,
    merge_user_data,
    public_key_of,
    read_user_data,
    user_part,
)
from machines.errors import DriverError, MachineTimeoutError, PreCreateError

if TYPE_CHECKING:  # boto3 takes 0.5-1 s to import: only a command that talks to EC2 loads it
    import boto3
    import botocore.exceptions
    import botocore.loaders

log = logging.getLogger(__name__)

# Image owners published by the distributions themselves (not a table of AMI ids: those change every month).
DEBIAN_OWNER = "136693071363"
CANONICAL_OWNER = "099720109477"
DEFAULT_IMAGES: list[tuple[str, str]] = [  # (owner, name pattern with the distribution's arch word), by preference
    (DEBIAN_OWNER, "debian-12-{arch}-*"),
    (CANONICAL_OWNER, "ubuntu/images/hvm-ssd*/ubuntu-*-{arch}-server-*"),
]
DISTRIBUTION_ARCH = {"x86_64": "amd64", "arm64": "arm64"}  # EC2's architecture name -> Debian's and Ubuntu's
# The login user each distribution's cloud images set up, by a word of the image name.
IMAGE_USERS: list[tuple[str, str]] = [("debian", "admin"), ("ubuntu", "ubuntu"), ("amzn", "ec2-user"), ("al20", "ec2-user")]
SSH_PORT = 22
TLS_API_PORT = 2376
ANYWHERE = "0.0.0.0/0"
USERDATA_FLAG = "--aws-userdata"
USER_DATA_LIMIT = 16384  # EC2's limit on user data before base64; cloud-init takes it gzipped too
IMDS_HOP_LIMIT = 2  # IMDSv2 answers reach containers behind one more network hop (the runtime's bridge)
STATE_MAP: dict[str, State] = {
    "pending": State.STARTING,
    "running": State.RUNNING,
    "stopping": State.STOPPING,
    "shutting-down": State.STOPPING,
    "stopped": State.STOPPED,
    "terminated": State.NOT_FOUND,
}
# Error codes that mean "already gone": an undo or rm treats them as success (once EC2 has had time to agree).
GONE_CODES = ("InvalidInstanceID.NotFound", "InvalidKeyPair.NotFound", "InvalidGroup.NotFound", "InvalidGroupId.NotFound")
# Errors that right after a create mean "EC2 does not see it yet" (code, or code:words of the message).
NOT_YET_CODES = GONE_CODES + ("InvalidParameterValue:iamInstanceProfile",)
# Requests whose resource may exist although their answer never reached us: their sending time is noted.
CREATE_REQUESTS = ("ImportKeyPair", "CreateSecurityGroup", "RunInstances")


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _matches(error: botocore.exceptions.ClientError, codes: tuple[str, ...]) -> bool:
    """Whether EC2's error is one of ``codes``: a code prefix, or ``code:words`` the message must contain too."""
    code, message = _error_code(error), str(error.response.get("Error", {}).get("Message", ""))
    for entry in codes:
        prefix, _, words = entry.partition(":")
        if code.startswith(prefix) and words in message:
            return True
    return False


def encode_user_data(text: str) -> str | bytes:
    """User data as EC2 takes it: as is up to 16 KB, else gzipped (cloud-init unpacks it) when that fits."""
    raw = text.encode()
    if len(raw) <= USER_DATA_LIMIT:
        return text
    packed = gzip.compress(raw, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise PreCreateError(f"{USERDATA_FLAG}: user data is {len(raw)} bytes ({len(packed)} gzipped); "
                             f"EC2 allows {USER_DATA_LIMIT}")
    return packed


def _one_line(error: Exception) -> str:
    """EC2's message without botocore's "An error occurred (...) when calling ..." wrapper, on one line."""
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        detail = error.response.get("Error", {})
        text = f"{detail.get('Code', 'Error')}: {detail.get('Message', '')}"
    else:
        text = str(error)
    return " ".join(text.split())


def parse_open_port(value: str) -> tuple[int, str]:
    """``port[/proto]`` (Docker Machine's syntax) -> (port, protocol)."""
    port_text, _, protocol = value.partition("/")
    protocol = protocol or "tcp"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or protocol not in ("tcp", "udp"):
        raise PreCreateError(f"--aws-open-port {value!r}: expected PORT or PORT/tcp or PORT/udp")
    return int(port_text), protocol


def parse_tags(values: list[str]) -> list[dict[str, str]]:
    """``k1,v1,k2,v2`` (one flag value or several) -> EC2 tag list."""
    items = [item for value in values for item in value.split(",")]
    if len(items) % 2:
        raise PreCreateError("--aws-tags: expected key,value pairs (k1,v1,k2,v2)")
    return [{"Key": key, "Value": value} for key, value in zip(items[::2], items[1::2], strict=True)]


@functools.lru_cache(maxsize=1)
def _shared_loader() -> botocore.loaders.Loader:
    import botocore.loaders

    return botocore.loaders.create_loader()


class AWSDriver(Driver):
    """Hosts on Amazon EC2 (or an EC2-compatible endpoint) through boto3."""

    name = "aws"
    cloud_config_flag = "userdata"  # --cloud-config FILE; --aws-userdata stays its alias
    description = "Amazon EC2 instances (Docker Machine's amazonec2 flags)"
    flags = [
        Flag("profile", "shared-credentials profile to use", envvar="AWS_PROFILE"),
        # No envvar on the credentials: boto3's chain reads AWS_ACCESS_KEY_ID & co. itself at each call, so keys from
        # the environment never reach the machine's config.json; only keys passed as flags are kept there.
        Flag("access-key", "access key id (default: boto3's credential chain: AWS_ACCESS_KEY_ID, profile, role)"),
        Flag("secret-key", "secret access key", secret=True),
        Flag("session-token", "session token of temporary credentials", secret=True),
        Flag("endpoint", "EC2 endpoint URL, for EC2-compatible clouds", envvar="AWS_ENDPOINT"),
        Flag("region", "region", default="us-east-1", envvar="AWS_DEFAULT_REGION"),
        Flag("zone", "availability zone letter", default="a", envvar="AWS_ZONE"),
        Flag("instance-type", "instance type", default="t3.micro", envvar="AWS_INSTANCE_TYPE"),
        Flag("ami", "image id (default: the newest Debian 12, else Ubuntu, image of the region)", envvar="AWS_AMI"),
        Flag("vpc-id", "VPC (default: the region's default VPC)", envvar="AWS_VPC_ID"),
        Flag("subnet-id", "subnet (default: the VPC's default subnet for the zone)", envvar="AWS_SUBNET_ID"),
        Flag("security-group", "existing security group name or id, used as is (repeatable; default: one we "
             "create for the machine)", type=list, envvar="AWS_SECURITY_GROUP"),
        Flag("open-port", "extra port[/proto] to open in the group we create (repeatable)", type=list),
        Flag("allow-cidr", "source CIDR allowed into the group we create (repeatable; default: anywhere)",
             type=list, envvar="AWS_ALLOW_CIDR"),
        Flag("root-size", "root volume size in GiB", type=int, default=16, envvar="AWS_ROOT_SIZE"),
        Flag("volume-type", "root volume type", default="gp3", envvar="AWS_VOLUME_TYPE"),
        Flag("iam-instance-profile", "IAM instance profile name or ARN", envvar="AWS_INSTANCE_PROFILE"),
        Flag("tags", "extra tags as k1,v1,k2,v2", type=list, envvar="AWS_TAGS"),
        Flag("ssh-user", "SSH user (default: the image's, e.g. admin for Debian, ubuntu for Ubuntu)",
             envvar="AWS_SSH_USER"),
        Flag("keypair-name", "existing EC2 key pair to use (needs --aws-ssh-keypath)", envvar="AWS_KEYPAIR_NAME"),
        Flag("ssh-keypath", "private key of --aws-keypair-name", envvar="AWS_SSH_KEYPATH"),
        Flag("use-private-address", "connect through the private address", type=bool, default=False,
             envvar="AWS_USE_PRIVATE_IP"),
        Flag("private-address-only", "no public address at all (implies --aws-use-private-address)", type=bool,
             default=False, envvar="AWS_PRIVATE_ADDRESS_ONLY"),
        Flag("private-ip-address", "fixed private IPv4 address in the subnet", envvar="AWS_PRIVATE_IP_ADDRESS"),
        Flag("request-spot-instance", "launch a spot instance", type=bool, default=False),
        Flag("spot-price", "maximum spot price per hour (default: the on-demand price)", envvar="AWS_SPOT_PRICE"),
        Flag("monitoring", "detailed CloudWatch monitoring", type=bool, default=False),
        Flag("userdata", "file of extra user data (script or cloud-config), run after ours", envvar="AWS_USERDATA"),
        Flag("metadata-tokens", "IMDSv2 tokens: required or optional", default="required",
             envvar="AWS_METADATA_TOKENS"),
        Flag("retries", "API retries on throttling and transient errors", type=int, default=5),
        Flag("wait-timeout", "seconds to wait for each EC2 state change", type=int, default=300,
             envvar="AWS_WAIT_TIMEOUT"),
        Flag("consistency-window", "seconds EC2 may take to show what it just made: NotFound for a new id means "
             "'not yet' this long", type=int, default=60, envvar="AWS_CONSISTENCY_WINDOW"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._boto_session: boto3.Session | None = None

    # -- configuration helpers --------------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        return self.config.get(key)

    @property
    def resource_name(self) -> str:
        """Name of the key pair and security group we create: says who made them, unique per machine name."""
        return f"machines-{self.machine_name}"

    @property
    def timeout(self) -> float:
        return float(self._get("wait_timeout") or 300)

    # -- eventual consistency ----------------------------------------------------------------------------------
    def _note_sent(self, event_name: str, **_: Any) -> None:
        """botocore's before-send hook: a create request is leaving, so its resource may exist from now on."""
        operation = event_name.rsplit(".", 1)[-1]
        if operation in CREATE_REQUESTS:
            self.config.setdefault("requested_at", {})[operation] = time.time()

    def _expect_request(self, operation: str) -> None:
        """Before a create call: not sent yet (None), so an undo knows a failure before sending made nothing."""
        self.config.setdefault("requested_at", {})[operation] = None

    def _was_sent(self, operation: str) -> bool:
        """Whether a create request may have reached EC2 (a record older than these notes: assume it did)."""
        requested = self._get("requested_at") or {}
        return operation not in requested or requested[operation] is not None

    @property
    def consistency_window(self) -> float:
        return float(self._get("consistency_window") if self._get("consistency_window") is not None else 60)

    def _settling(self, operation: str) -> bool:
        """Whether EC2 may still be catching up with what ``operation`` made: NotFound then means "not yet"."""
        sent = (self._get("requested_at") or {}).get(operation)
        return sent is not None and time.time() - sent < self.consistency_window

    def _call_settling(self, operation: str, **params: Any) -> dict[str, Any]:
        """A call naming something made moments ago: EC2's "not found" is retried for the consistency window."""
        deadline = time.monotonic() + self.consistency_window
        delay = 0.2
        while time.monotonic() < deadline:
            response = self._call_unless(NOT_YET_CODES, operation, **params)
            if response is not None:
                return response
            log.info("%s: EC2 does not show what %s names yet; retrying", self.machine_name, operation)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        return self._call(operation, **params)

    def _session(self) -> boto3.Session:
        """One boto3 session per driver, sharing the process-wide model loader (EC2's model takes 0.5 s to parse)."""
        if self._boto_session is None:
            import boto3
            import botocore.exceptions
            import botocore.session

            core = botocore.session.Session()
            core.register_component("data_loader", _shared_loader())
            try:
                self._boto_session = boto3.Session(
                    botocore_session=core,
                    profile_name=self._get("profile") or None,
                    aws_access_key_id=self._get("access_key") or None,
                    aws_secret_access_key=self._get("secret_key") or None,
                    aws_session_token=self._get("session_token") or None,
                    region_name=self._get("region") or "us-east-1",
                )
            except botocore.exceptions.ProfileNotFound as error:
                raise PreCreateError(f"--aws-profile: {error}") from None
        return self._boto_session

    @property
    def ec2(self) -> Any:
        """The EC2 client, made on first use (so ``ls`` on other machines never pays for it)."""
        if self._client is None:
            session = self._session()
            retries = self._get("retries")
            attempts = 1 + (5 if retries is None else int(retries))  # botocore counts the first attempt too
            import botocore.config

            retry = botocore.config.Config(retries={"max_attempts": attempts, "mode": "standard"})
            self._client = session.client("ec2", endpoint_url=self._get("endpoint") or None, config=retry)
            self._client.meta.events.register("before-send.ec2", self._note_sent)
        return self._client

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call; any failure becomes a one-line ``DriverError`` naming the operation."""
        response = self._call_unless((), operation, **params)
        assert response is not None
        return response

    def _call_unless(self, codes: tuple[str, ...], operation: str, **params: Any) -> dict[str, Any] | None:
        """Like ``_call``, but an EC2 error whose code starts with one of ``codes`` gives None (e.g. "already gone")."""
        import botocore.exceptions
        import botocore.parsers

        try:
            return cast(dict[str, Any], getattr(self.ec2, operation)(**params))
        except botocore.exceptions.ClientError as error:
            name = self.ec2.meta.method_to_api_mapping.get(operation, "")
            if name in CREATE_REQUESTS:  # EC2 answered with an error: it made nothing
                self._expect_request(name)
            if codes and _matches(error, codes):
                return None
            raise DriverError(f"EC2 {operation}: {_one_line(error)}") from None
        except botocore.exceptions.NoCredentialsError:
            raise PreCreateError(
                "no AWS credentials: pass --aws-access-key and --aws-secret-key, set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or use --aws-profile"
            ) from None
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError) as error:
            raise DriverError(f"EC2 {operation}: {_one_line(error)}") from None

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        """Poll ``done`` until true or the wait timeout; quick at first (moto, fast APIs), then every 3 s."""
        log.info("%s: waiting for %s (timeout %ds)", self.machine_name, what, self.timeout)
        deadline = time.monotonic() + self.timeout
        delay = 0.2
        while not done():
            if time.monotonic() >= deadline:
                raise MachineTimeoutError(f"timed out after {self.timeout:.0f}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    # -- pre-create ---------------------------------------------------------------------------------------------
    def pre_create_check(self) -> None:
        """Everything that can be checked without making anything: flags, credentials, region, type, AMI, names.

        Any failure here (an EC2 error included) is a pre-create error: nothing exists yet, nothing needs undoing.
        """
        try:
            self._check_flags()
            self._check_credentials()
            self._check_region()
            self._check_instance_type()
            self._resolve_image()
            self._check_user_data_size()
            self._resolve_network()
            self._check_names_free()
            self._resolve_security_groups()
        except PreCreateError:
            raise
        except DriverError as error:
            raise PreCreateError(str(error)) from None

    def _check_flags(self) -> None:
        cidrs = []
        for cidr in self._get("allow_cidr") or []:
            try:  # a bare address is a /32 (/128): EC2 itself refuses a CIDR without its prefix length
                cidrs.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise PreCreateError(f"--aws-allow-cidr {cidr!r} is not a CIDR such as 203.0.113.0/24") from None
        self.config["allow_cidr"] = cidrs
        for port in self._get("open_port") or []:
            parse_open_port(port)
        parse_tags(self._get("tags") or [])
        if self._get("metadata_tokens") not in ("required", "optional"):
            raise PreCreateError("--aws-metadata-tokens must be 'required' or 'optional'")
        for option in ("open_port", "allow_cidr"):
            if self._get("security_group") and self._get(option):
                name = option.replace("_", "-")
                raise PreCreateError(f"--aws-{name} only applies to the group machines creates, not to --aws-security-group")
        if bool(self._get("keypair_name")) != bool(self._get("ssh_keypath")):
            raise PreCreateError("--aws-keypair-name and --aws-ssh-keypath go together")
        if self._get("ssh_keypath"):
            if not os.path.isfile(self._get("ssh_keypath")):
                raise PreCreateError(f"--aws-ssh-keypath {self._get('ssh_keypath')}: no such file")
            public_key_of(self._get("ssh_keypath"), "--aws-ssh-keypath")
        if self._get("spot_price"):
            try:
                float(self._get("spot_price"))
            except ValueError:
                raise PreCreateError(f"--aws-spot-price {self._get('spot_price')!r} is not a price such as 0.05") from None
        if int(self._get("root_size") or 0) < 1:
            raise PreCreateError("--aws-root-size must be a positive number of GiB")
        theirs = self._their_user_data()
        if theirs:
            user_part(theirs, USERDATA_FLAG)  # refuses what cannot be merged
        if self._get("private_ip_address"):
            try:
                ipaddress.IPv4Address(self._get("private_ip_address"))
            except ValueError:
                raise PreCreateError(f"--aws-private-ip-address {self._get('private_ip_address')!r} is not an IPv4 address") from None

    def _check_credentials(self) -> None:
        if self._session().get_credentials() is None:
            self._call("describe_regions")  # raises the one-line "no AWS credentials" error

    def _check_region(self) -> None:
        """The region must be one EC2 lists; a name botocore does not know is refused without a network call,
        except behind ``--aws-endpoint`` (EC2-compatible clouds name their regions as they like)."""
        region = self._get("region")
        session = self._session()
        known = {
            name
            for partition in session.get_available_partitions()
            for name in session.get_available_regions("ec2", partition_name=partition)
        }
        if region not in known and not self._get("endpoint"):
            raise PreCreateError(f"unknown AWS region {region!r}")
        try:
            regions = self._call("describe_regions", AllRegions=True)["Regions"]
        except DriverError as error:
            if region in known or isinstance(error, PreCreateError):
                raise
            raise PreCreateError(f"unknown AWS region {region!r} (the endpoint does not serve it)") from None
        if region not in {entry["RegionName"] for entry in regions}:
            raise PreCreateError(f"unknown AWS region {region!r}")

    def _check_instance_type(self, instance_type: str | None = None) -> None:
        instance_type = instance_type or self._get("instance_type")
        found = self._call_unless(
            ("InvalidInstanceType", "InvalidParameterValue"), "describe_instance_types", InstanceTypes=[instance_type]
        )
        if not found or not found["InstanceTypes"]:
            raise PreCreateError(f"--aws-instance-type {instance_type!r} does not exist in {self._get('region')}")
        self.config["architectures"] = found["InstanceTypes"][0].get("ProcessorInfo", {}).get(
            "SupportedArchitectures") or ["x86_64"]

    def _resolve_image(self) -> None:
        """Check the AMI exists (or find the default one) and pick the SSH user its distribution uses."""
        ami = self._get("ami")
        if ami:
            found = self._call_unless(("InvalidAMIID",), "describe_images", ImageIds=[ami])
            if not found or not found["Images"]:
                raise PreCreateError(f"--aws-ami {ami!r} does not exist in {self._get('region')}")
            image = found["Images"][0]
            architectures = self._get("architectures") or ["x86_64"]
            if image.get("Architecture") and image["Architecture"] not in architectures:
                raise PreCreateError(f"--aws-ami {ami!r} is an {image['Architecture']} image but --aws-instance-type "
                                     f"{self._get('instance_type')!r} runs {' or '.join(architectures)}")
        else:
            image = self._default_image()
            self.config["ami"] = image["ImageId"]
        self.config["root_device_name"] = image.get("RootDeviceName") or "/dev/xvda"
        if not self._get("ssh_user"):
            name = (image.get("Name") or "").lower()
            users = [user for word, user in IMAGE_USERS if word in name]
            if not users:
                raise PreCreateError(f"cannot tell the login user of {image['ImageId']} ({name or 'no name'}); pass --aws-ssh-user")
            self.config["ssh_user"] = users[0]

    def _default_image(self) -> dict[str, Any]:
        """The newest Debian 12, else Ubuntu, image for the instance type's architecture (arm64 for Graviton)."""
        architecture = next((name for name in self._get("architectures") or [] if name in DISTRIBUTION_ARCH), "x86_64")
        for owner, pattern in DEFAULT_IMAGES:
            images = self._call(
                "describe_images",
                Owners=[owner],
                Filters=[
                    {"Name": "name", "Values": [pattern.format(arch=DISTRIBUTION_ARCH[architecture])]},
                    {"Name": "architecture", "Values": [architecture]},
                    {"Name": "state", "Values": ["available"]},
                ],
            )["Images"]
            if images:
                newest = max(images, key=lambda image: (image.get("CreationDate") or "", image.get("Name") or ""))
                log.info("%s: using %s (%s)", self.machine_name, newest["ImageId"], newest.get("Name"))
                return cast(dict[str, Any], newest)
        raise PreCreateError(f"no {architecture} Debian 12 or Ubuntu image found in {self._get('region')}; pass --aws-ami")

    def _check_user_data_size(self) -> None:
        """Ours (with a throwaway host key: ed25519 keys have one size) plus theirs must fit EC2's 16 KB, gzipped or not."""
        theirs = self._their_user_data()
        if not theirs:
            return
        key_path = self._get("ssh_keypath") or self.ssh_key_path
        authorized = public_key_of(key_path) if os.path.isfile(key_path) else "ssh-ed25519 " + "A" * 68
        ours = cloud_config(authorized, *generate_host_key(), self._get("ssh_user"))
        encode_user_data(merge_user_data(ours, theirs, USERDATA_FLAG))

    def _resolve_network(self) -> None:
        """Fill in the VPC and subnet (defaults: the default VPC and its subnet for the zone) and check they fit."""
        zone = f"{self._get('region')}{self._get('zone')}"
        subnet_id = self._get("subnet_id")
        if subnet_id:
            subnets = self._call("describe_subnets", SubnetIds=[subnet_id])["Subnets"]
            subnet = subnets[0]
            if self._get("vpc_id") and subnet["VpcId"] != self._get("vpc_id"):
                raise PreCreateError(f"--aws-subnet-id {subnet_id} is not in --aws-vpc-id {self._get('vpc_id')}")
            self.config["vpc_id"] = subnet["VpcId"]
        else:
            vpc_id = self._get("vpc_id")
            if not vpc_id:
                vpcs = self._call("describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
                if not vpcs:
                    raise PreCreateError(f"region {self._get('region')} has no default VPC; pass --aws-vpc-id or --aws-subnet-id")
                vpc_id = self.config["vpc_id"] = vpcs[0]["VpcId"]
            subnets = self._call(
                "describe_subnets",
                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "availability-zone", "Values": [zone]}],
            )["Subnets"]
            if not subnets:
                raise PreCreateError(f"VPC {vpc_id} has no subnet in {zone}; pass --aws-subnet-id")
            subnet = sorted(subnets, key=lambda entry: not entry.get("DefaultForAz"))[0]
            self.config["subnet_id"] = subnet["SubnetId"]
        private_ip = self._get("private_ip_address")
        if private_ip and ipaddress.IPv4Address(private_ip) not in ipaddress.ip_network(subnet["CidrBlock"]):
            raise PreCreateError(f"--aws-private-ip-address {private_ip} is outside subnet {subnet['SubnetId']} ({subnet['CidrBlock']})")
        self.config["zone_name"] = subnet.get("AvailabilityZone") or zone

    def _check_names_free(self) -> None:
        """Our key pair and security group names must not exist yet: we would delete someone else's at rm."""
        if self._get("keypair_name"):
            if not self._call_unless(GONE_CODES, "describe_key_pairs", KeyNames=[self._get("keypair_name")]):
                raise PreCreateError(f"--aws-keypair-name {self._get('keypair_name')!r} does not exist")
        else:
            pairs = self._call("describe_key_pairs", Filters=[{"Name": "key-name", "Values": [self.resource_name]}])
            if pairs["KeyPairs"]:
                raise PreCreateError(f"an EC2 key pair named {self.resource_name!r} already exists")
        if not self._get("security_group"):
            groups = self._call(
                "describe_security_groups",
                Filters=[
                    {"Name": "group-name", "Values": [self.resource_name]},
                    {"Name": "vpc-id", "Values": [self._get("vpc_id")]},
                ],
            )["SecurityGroups"]
            if groups:
                raise PreCreateError(f"a security group named {self.resource_name!r} already exists in {self._get('vpc_id')}")

    def _resolve_security_groups(self) -> None:
        """Turn the names or ids given in ``--aws-security-group`` into ids of existing groups in our VPC."""
        wanted = self._get("security_group") or []
        ids: list[str] = []
        for group in wanted:
            key = "group-id" if group.startswith("sg-") else "group-name"
            found = self._call(
                "describe_security_groups",
                Filters=[{"Name": key, "Values": [group]}, {"Name": "vpc-id", "Values": [self._get("vpc_id")]}],
            )["SecurityGroups"]
            if not found:
                raise PreCreateError(f"--aws-security-group {group!r}: no such group in {self._get('vpc_id')}")
            ids.append(found[0]["GroupId"])
        self.config["security_group_ids"] = ids

    # -- create -------------------------------------------------------------------------------------------------
    def create(self, ledger: Ledger) -> None:
        """Key pair -> security group -> instance -> wait running; each recorded in the ledger with a waited undo."""
        if "security_group_ids" not in self.config:  # called without pre_create_check (library users)
            self.pre_create_check()
        self.config["machine_id"] = self.config.get("machine_id") or uuid.uuid4().hex
        self._import_key_pair(ledger)
        if not self._get("security_group_ids"):
            self.config["security_group_ids"] = [self._create_security_group(ledger)]
        self._launch(ledger, self._get("security_group_ids"))
        self._wait_for_state("running")

    def _tag_spec(self, resource_type: str) -> dict[str, Any]:
        tags = [
            {"Key": "Name", "Value": self.machine_name},
            {"Key": "machines:name", "Value": self.machine_name},
            {"Key": "machines:id", "Value": self.config["machine_id"]},
        ] + parse_tags(self._get("tags") or [])
        return {"ResourceType": resource_type, "Tags": tags}

    def _import_key_pair(self, ledger: Ledger) -> None:
        if self._get("keypair_name"):
            return
        with open(self.ssh_key_path + ".pub", "rb") as handle:
            material = handle.read()
        # Recorded before the call, like every step: a Ctrl-C while EC2 answers must not leak what it made.
        self.config["created_key_pair"] = self.resource_name
        self._expect_request("ImportKeyPair")
        ledger.record(f"EC2 key pair {self.resource_name}", self._delete_key_pair)
        self._call(
            "import_key_pair",
            KeyName=self.resource_name,
            PublicKeyMaterial=material,
            TagSpecifications=[self._tag_spec("key-pair")],
        )

    def _create_security_group(self, ledger: Ledger) -> str:
        self.config["created_security_group"] = self.resource_name
        self._expect_request("CreateSecurityGroup")
        ledger.record(f"EC2 security group {self.resource_name}", self._delete_security_group)
        group_id = self._call(
            "create_security_group",
            GroupName=self.resource_name,
            Description=f"machines: {self.machine_name}",
            VpcId=self._get("vpc_id"),
            TagSpecifications=[self._tag_spec("security-group")],
        )["GroupId"]
        self.config["created_security_group_id"] = group_id
        cidrs = self._get("allow_cidr") or []
        if not cidrs:
            log.warning("%s: SSH%s open to anywhere; restrict with --aws-allow-cidr", self.machine_name,
                        " and the TLS API port" if self.api_over_tls() else "")
            cidrs = [ANYWHERE]
        ports = [(SSH_PORT, "tcp")] + ([(TLS_API_PORT, "tcp")] if self.api_over_tls() else [])
        ports += [parse_open_port(value) for value in self._get("open_port") or []]
        ipv4 = [{"CidrIp": cidr} for cidr in cidrs if ":" not in cidr]
        ipv6 = [{"CidrIpv6": cidr} for cidr in cidrs if ":" in cidr]
        permissions = [
            {"IpProtocol": protocol, "FromPort": port, "ToPort": port, "IpRanges": ipv4, "Ipv6Ranges": ipv6}
            for port, protocol in dict.fromkeys(ports)
        ]
        self._call_settling("authorize_security_group_ingress", GroupId=group_id, IpPermissions=permissions)
        return str(group_id)

    def open_cluster_ports(self, cluster: str, ports: Sequence[tuple[int, str]]) -> None:
        """A security group per cluster whose rules admit only its own members (a self reference), added to this
        instance's groups: the ports are open between members and to nobody else."""
        name = f"machines-cluster-{cluster}"
        group_id = self._cluster_group(name)
        if group_id is None:
            created = self._call_unless(
                ("InvalidGroup.Duplicate",), "create_security_group", GroupName=name, VpcId=self._get("vpc_id"),
                Description=f"machines: the members of cluster {cluster}, to each other",
            )
            if created is None:  # another member made it at the same moment
                self._wait(f"security group {name}", lambda: self._cluster_group(name) is not None)
                group_id = self._cluster_group(name)
            else:
                group_id = str(created["GroupId"])
                self._call_settling("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[
                    {"IpProtocol": protocol, "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": group_id}]}
                    for port, protocol in ports
                ])  # fmt: skip
        groups = self._instance_groups()
        if group_id not in groups:
            self._call_settling("modify_instance_attribute", InstanceId=self._get("instance_id"),
                                Groups=[*groups, group_id])  # fmt: skip

    def close_cluster_ports(self, cluster: str, *, last: bool) -> None:
        group_id = self._cluster_group(f"machines-cluster-{cluster}")
        if group_id is None:
            return
        groups = self._instance_groups()
        if group_id in groups:
            self._call("modify_instance_attribute", InstanceId=self._get("instance_id"),
                       Groups=[group for group in groups if group != group_id])  # fmt: skip
        if last:
            self._call_unless(("InvalidGroup.NotFound",), "delete_security_group", GroupId=group_id)

    def _cluster_group(self, name: str) -> str | None:
        found = self._call("describe_security_groups", Filters=[
            {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [self._get("vpc_id")]}])["SecurityGroups"]
        return str(found[0]["GroupId"]) if found else None

    def _instance_groups(self) -> list[str]:
        """The instance's security groups: the ones it was launched with (a describe moments after a change may
        not show them yet, and ``ModifyInstanceAttribute`` replaces the whole list), then any others it has."""
        reservations = self._call("describe_instances", InstanceIds=[self._get("instance_id")])["Reservations"]
        shown = [group["GroupId"] for group in reservations[0]["Instances"][0]["SecurityGroups"]]
        return list(dict.fromkeys([*(self._get("security_group_ids") or []), *shown]))

    def _user_data(self) -> str | bytes:
        host_private, host_public = generate_host_key()
        self.config["host_key"] = host_public
        key_path = self._get("ssh_keypath") or self.ssh_key_path
        ours = cloud_config(public_key_of(key_path), host_private, host_public, self._get("ssh_user"))
        return encode_user_data(merge_user_data(ours, self._their_user_data(), USERDATA_FLAG))

    def _their_user_data(self) -> str | None:
        path = self._get("userdata")
        return read_user_data(path, USERDATA_FLAG) if path else None

    def _launch(self, ledger: Ledger, groups: list[str]) -> None:
        """RunInstances, recorded *before* the call: an interrupted launch is found again by its machines:id tag.

        The machines:id is also the idempotency token, so botocore's own retries never launch a second instance.
        """
        interface: dict[str, Any] = {
            "DeviceIndex": 0,
            "SubnetId": self._get("subnet_id"),
            "Groups": groups,
            "AssociatePublicIpAddress": not self._get("private_address_only"),
            "DeleteOnTermination": True,
        }
        if self._get("private_ip_address"):
            interface["PrivateIpAddress"] = self._get("private_ip_address")
        params: dict[str, Any] = {
            "ImageId": self._get("ami"),
            "InstanceType": self._get("instance_type"),
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": self.config["machine_id"],
            "KeyName": self._get("keypair_name") or self.resource_name,
            "NetworkInterfaces": [interface],
            "Placement": {"AvailabilityZone": self._get("zone_name")},
            "UserData": self._user_data(),
            "Monitoring": {"Enabled": bool(self._get("monitoring"))},
            "MetadataOptions": {"HttpTokens": self._get("metadata_tokens"), "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": IMDS_HOP_LIMIT},
            "BlockDeviceMappings": [
                {
                    "DeviceName": self._get("root_device_name"),
                    "Ebs": {
                        "VolumeSize": int(self._get("root_size")),
                        "VolumeType": self._get("volume_type"),
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "TagSpecifications": [self._tag_spec("instance"), self._tag_spec("volume")],
        }
        profile = self._get("iam_instance_profile")
        if profile:
            params["IamInstanceProfile"] = {"Arn" if profile.startswith("arn:") else "Name": profile}
        if self._get("request_spot_instance"):
            spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if self._get("spot_price"):
                spot["MaxPrice"] = str(self._get("spot_price"))
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        self._expect_request("RunInstances")
        ledger.record(f"EC2 instance of {self.machine_name}", self._terminate_instances)
        # A key pair, group or instance profile made moments ago may not be visible to RunInstances yet.
        instance = self._call_settling("run_instances", **params)["Instances"][0]
        self.config["instance_id"] = instance["InstanceId"]
        log.info("%s: launched %s", self.machine_name, instance["InstanceId"])

    # -- removal (the ledger's undos and rm) --------------------------------------------------------------------
    def _tagged_instance_ids(self) -> list[str]:
        """Live instances carrying our machines:id tag, as EC2's (lagging) filtered list shows them."""
        if not self._get("machine_id"):
            return []
        reservations = self._call(
            "describe_instances",
            Filters=[
                {"Name": "tag:machines:id", "Values": [self._get("machine_id")]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ],
        )["Reservations"]
        return [instance["InstanceId"] for reservation in reservations for instance in reservation["Instances"]]

    def _our_instance_ids(self) -> list[str]:
        """The recorded instance plus any live instance carrying our machines:id tag (an interrupted launch).

        When RunInstances left but its answer never came back, the filtered list may not show the instance for a
        while: it is polled until it does or the consistency window has passed, and then the undo fails loudly
        rather than report success while an instance may be running.
        """
        ids = [self._get("instance_id")] if self._get("instance_id") else []
        tagged = self._tagged_instance_ids()
        if not ids and not tagged and self._settling("RunInstances"):
            log.info("%s: waiting for EC2 to list the instance RunInstances was launching", self.machine_name)
            while not tagged and self._settling("RunInstances"):
                time.sleep(1.0)
                tagged = self._tagged_instance_ids()
            if not tagged:
                raise DriverError(
                    f"EC2 did not list an instance tagged machines:id={self._get('machine_id')} within "
                    f"{self.consistency_window:.0f}s of RunInstances; look for it in the console and terminate it")
        return list(dict.fromkeys(ids + tagged))

    def _terminate_instances(self) -> None:
        if not self._was_sent("RunInstances"):
            return  # RunInstances never left: nothing was launched
        for instance_id in self._our_instance_ids():

            def terminated() -> bool:
                state = self._raw_state(instance_id)
                if state is None:  # NotFound: "not visible yet" while settling, gone after (EC2 lists terminated ones)
                    return not self._settling("RunInstances")
                if state == "terminated":
                    return True
                if state != "shutting-down":
                    self._call_unless(GONE_CODES, "terminate_instances", InstanceIds=[instance_id])
                return False

            self._wait(f"instance {instance_id} to be terminated", terminated)

    def _key_pair_visible(self, name: str) -> bool:
        return bool(self._call_unless(GONE_CODES, "describe_key_pairs", KeyNames=[name]))

    def _delete_key_pair(self) -> None:
        """Delete our key pair once EC2 shows it (DeleteKeyPair of a key EC2 does not see yet succeeds and does
        nothing), then wait until it is gone."""
        name = self._get("created_key_pair")
        if name and self._was_sent("ImportKeyPair"):
            self._wait(f"key pair {name} to be visible",
                       lambda: self._key_pair_visible(name) or not self._settling("ImportKeyPair"))
            if self._key_pair_visible(name):
                self._call_unless(GONE_CODES, "delete_key_pair", KeyName=name)
                self._wait(f"key pair {name} to be deleted", lambda: not self._key_pair_visible(name))
        self.config.pop("created_key_pair", None)

    def _tagged_security_groups(self, name: str) -> list[str]:
        """Ids of our group by name and machines:id tag, as EC2's (lagging) filtered list shows them."""
        groups = self._call(
            "describe_security_groups",
            Filters=[
                {"Name": "group-name", "Values": [name]},
                {"Name": "tag:machines:id", "Values": [self._get("machine_id")]},
            ],
        )["SecurityGroups"]
        return [group["GroupId"] for group in groups]

    def _our_security_groups(self) -> list[str]:
        """The group we created: its recorded id, else found by name and tag (its id may never have reached us)."""
        name = self._get("created_security_group")
        if not name or not self._get("machine_id") or not self._was_sent("CreateSecurityGroup"):
            return []
        if self._get("created_security_group_id"):
            return [self._get("created_security_group_id")]
        found: list[str] = []

        def listed() -> bool:
            found[:] = self._tagged_security_groups(name)
            return bool(found) or not self._settling("CreateSecurityGroup")

        self._wait(f"security group {name} to be listed", listed)
        return found

    def _delete_security_group(self) -> None:
        """Delete our group by id; EC2 refuses (DependencyViolation) while a terminating instance still holds it,
        and answers NotFound while it does not show a group made moments ago: both are retried."""
        for group_id in self._our_security_groups():
            accepted: list[bool] = []

            def deleted() -> bool:
                if not accepted:  # until EC2 takes the delete: NotFound while settling and DependencyViolation retried
                    if self._call_unless(GONE_CODES + ("DependencyViolation",), "delete_security_group", GroupId=group_id):
                        accepted.append(True)
                    elif self._settling("CreateSecurityGroup"):
                        return False
                return not self._call_unless(GONE_CODES, "describe_security_groups", GroupIds=[group_id])

            self._wait(f"security group {group_id} to be deleted", deleted)
        self.config.pop("created_security_group", None)
        self.config.pop("created_security_group_id", None)

    def remove(self) -> None:
        """Terminate the instance, then delete our key pair and group; each already gone is fine."""
        self._terminate_instances()
        self._delete_key_pair()
        self._delete_security_group()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _describe_any(self, instance_id: str | None = None) -> dict[str, Any] | None:
        """The instance (ours by default) as EC2 describes it, terminated included; None when EC2 does not show it."""
        instance_id = instance_id or self._get("instance_id")
        if not instance_id:
            return None
        found = self._call_unless(GONE_CODES, "describe_instances", InstanceIds=[instance_id])
        instances = [instance for reservation in (found or {}).get("Reservations", []) for instance in reservation["Instances"]]
        return cast(dict[str, Any], instances[0]) if instances else None

    def _describe(self, instance_id: str | None = None) -> dict[str, Any] | None:
        """The instance as EC2 describes it; None when it no longer exists or is terminated."""
        instance = self._describe_any(instance_id)
        return None if instance is None or instance["State"]["Name"] == "terminated" else instance

    def _raw_state(self, instance_id: str) -> str | None:
        instance = self._describe_any(instance_id)
        return instance["State"]["Name"] if instance else None

    def _instance_state(self, instance_id: str) -> str | None:
        instance = self._describe(instance_id)
        return instance["State"]["Name"] if instance else None

    def _existing_instance(self) -> str:
        instance_id = self._get("instance_id")
        if not instance_id or self._instance_state(instance_id) is None:
            raise DriverError(f"EC2 instance {instance_id or '(none)'} of {self.machine_name} no longer exists")
        return str(instance_id)

    def _wait_for_state(self, wanted: str) -> None:
        """Wait for ``wanted``; a launch that ends terminated is reported with EC2's StateReason."""
        instance_id = self._get("instance_id")

        def reached() -> bool:
            instance = self._describe_any(instance_id)
            if instance is None:
                if self._settling("RunInstances"):
                    return False  # EC2 does not show the instance it just launched yet
                raise DriverError(f"EC2 instance {instance_id} no longer exists")
            current = str(instance["State"]["Name"])
            if current in ("shutting-down", "terminated") and wanted != current:
                reason = instance.get("StateReason", {}).get("Message") or current
                raise DriverError(f"EC2 instance {instance_id} was terminated while waiting for it to be {wanted}: {reason}")
            return current == wanted

        self._wait(f"instance {instance_id} to be {wanted}", reached)

    def state(self) -> State:
        instance = self._describe_any()
        if instance is None:
            # an instance EC2 launched moments ago may not be visible yet: it is starting, not gone
            return State.STARTING if self._get("instance_id") and self._settling("RunInstances") else State.NOT_FOUND
        return STATE_MAP.get(instance["State"]["Name"], State.ERROR)

    def _refuse_spot_stop(self) -> None:
        """A one-time spot instance cannot be stopped (EC2 answers UnsupportedOperation): refused before asking."""
        if self._get("request_spot_instance"):
            raise DriverError(f"{self.machine_name} is a one-time spot instance: EC2 cannot stop it, only terminate "
                              "it ('machines rm')")

    def start(self) -> None:
        self._call("start_instances", InstanceIds=[self._existing_instance()])
        self._wait_for_state("running")

    def stop(self) -> None:
        self._refuse_spot_stop()
        self._call("stop_instances", InstanceIds=[self._existing_instance()])
        self._wait_for_state("stopped")

    def kill(self) -> None:
        self._refuse_spot_stop()
        self._call("stop_instances", InstanceIds=[self._existing_instance()], Force=True)
        self._wait_for_state("stopped")

    def restart(self) -> None:
        self._call("reboot_instances", InstanceIds=[self._existing_instance()])
        self._wait_for_state("running")

    def change(self, flags: Mapping[str, Any]) -> None:
        """``machines set --aws-instance-type``: EC2 changes the type of a stopped instance only."""
        if set(flags) != {"instance_type"}:
            super().change({key: value for key, value in flags.items() if key != "instance_type"})
        instance_id = self._existing_instance()
        if self.state() != State.STOPPED:
            raise DriverError(f"EC2 changes the instance type of a stopped instance only: run 'machines stop "
                              f"{self.machine_name}' first")
        try:
            self._check_instance_type(flags["instance_type"])
        except PreCreateError as error:
            raise DriverError(str(error)) from None
        self._call("modify_instance_attribute", InstanceId=instance_id, InstanceType={"Value": flags["instance_type"]})

    def ip(self) -> str:
        instance = self._describe()
        if instance is None:
            raise DriverError(f"EC2 instance of {self.machine_name} no longer exists")
        private = self._get("use_private_address") or self._get("private_address_only")
        address = instance.get("PrivateIpAddress") if private else instance.get("PublicIpAddress")
        if not address:
            hint = "" if private else " (reach it with --aws-use-private-address from inside its VPC)"
            raise DriverError(f"EC2 instance {instance['InstanceId']} has no {'private' if private else 'public'} address{hint}")
        return str(address)

    def private_ip(self) -> str:
        """The instance's address in its VPC: what swarm members advertise to each other."""
        instance = self._describe()
        if instance is None or not instance.get("PrivateIpAddress"):
            raise DriverError(f"EC2 instance of {self.machine_name} has no private address")
        return str(instance["PrivateIpAddress"])

    def ssh_details(self) -> SSHDetails:
        return SSHDetails(
            host=self.ip(),
            port=SSH_PORT,
            user=self._get("ssh_user") or "ubuntu",
            key_path=self._get("ssh_keypath") or self.ssh_key_path,
        )

    def initial_host_key(self) -> str | None:
        return cast("str | None", self._get("host_key"))
