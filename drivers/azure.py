"""Microsoft Azure driver (``--driver azure``): Docker Machine's azure flags on the current azure-mgmt-* SDKs.

What it fixes over docker-machine's driver:

* every resource it makes (resource group, NSG, vnet or subnet, public IP, NIC, VM) is recorded in the create ledger
  before the call that makes it and undone in reverse on failure or Ctrl-C, each undo waiting for Azure's
  long-running operation; ``rm`` removes the same set, tolerates what is already gone, and removes the vnet, subnet
  and resource group only when machines made them and nothing else uses them;
* the NSG opens SSH (and the TLS API port only when the API is exposed over TCP) from the ``--azure-allow-cidr``
  sources, with a warning when they are left open to the Internet;
* the SSH host key is generated here and injected through custom data (cloud-init), so the first SSH is verified;
* no device-code login: a service principal (flags) or azure-identity's DefaultAzureCredential (``AZURE_*``
  environment, workload or managed identity, Azure CLI), checked before anything is made; credentials that come from
  the environment are read there again by each command, never copied into the machine's ``config.json``.

What Azure does that the driver copes with (the fake Resource Manager in tests/azure enforces each):

* sizes are checked against the resource SKUs this subscription may use in the region (restrictions included);
* after a failed VM create Azure keeps the NIC reserved for about 180 s (``NicReservedForAnotherVm``): the undo
  waits and retries its delete rather than leave the NIC, public IP, NSG, vnet and group behind;
* ``publicKeys`` gets a throwaway RSA key (Azure refused ed25519 there); the machine's own key rides in the
  cloud-config, which is what lets us in;
* custom data over ARM's 87380 base64 characters, names Azure refuses, an existing vnet in another region and an
  unregistered resource provider are refused before anything is made;
* each request uses an api-version the cloud serves (US Government and China lag public Azure): the providers list
  what they serve, and a request whose version is not among them is sent with the newest served one before it.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
import time
import urllib.parse
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

if TYPE_CHECKING:  # the SDKs take seconds to import: only a command that talks to Azure loads them
    from azure.core.credentials import TokenCredential
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient
    from azure.mgmt.network import models as network_models
    from azure.mgmt.resource.resources import ResourceManagementClient

log = logging.getLogger(__name__)

# Resource Manager and Entra ID (login) endpoints of the Azure clouds Docker Machine named.
ENVIRONMENTS: dict[str, tuple[str, str]] = {
    "AzurePublicCloud": ("https://management.azure.com", "https://login.microsoftonline.com"),
    "AzureUSGovernmentCloud": ("https://management.usgovcloudapi.net", "https://login.microsoftonline.us"),
    "AzureChinaCloud": ("https://management.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
}
DEFAULT_IMAGE = "debian:debian-12:12-gen2:latest"
SSH_PORT = 22
TLS_API_PORT = 2376
CLUSTER_RULE_PRIORITY = 2000  # after the machine's own rules (100, 110...)
ANYWHERE = "*"
# Marks a resource group or vnet machines created to share between machines: the rm that leaves it empty removes it.
SHARED_TAG = {"machines-created": "true"}
# Admin user names Azure refuses (its documented list, the common ones).
RESERVED_USERS = frozenset({
    "root", "admin", "administrator", "user", "user1", "user2", "user3", "user4", "user5", "test", "test1", "test2",
    "test3", "guest", "owner", "server", "sql", "support", "sys", "backup", "console", "adm", "admin1", "admin2",
    "actuser", "aspnet", "a", "1", "123", "david", "john",
})
CUSTOM_DATA_FLAG = "--azure-custom-data"
CUSTOM_DATA_LIMIT = 87380  # ARM's limit on custom data, in base64 characters (64 KiB of data)
PROVIDERS = ("Microsoft.Compute", "Microsoft.Network")  # the resource providers the driver needs registered
# VM names: letters, digits, '-', '_', '.'; begin with a letter or digit, end with a letter, digit or '_'. The Linux
# computer name (the machine name too) may not hold '.' or '_'. At most 64 characters.
VM_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?")
NIC_RESERVED = "NicReservedForAnotherVm"
POWER_STATES: dict[str, State] = {
    "running": State.RUNNING,
    "starting": State.STARTING,
    "stopping": State.STOPPING,
    "deallocating": State.STOPPING,
    "stopped": State.STOPPED,
    "deallocated": State.STOPPED,
}


def _one_line(error: BaseException) -> str:
    """Azure's error code and message without the SDK's multi-line wrapping."""
    from azure.core.exceptions import HttpResponseError

    if isinstance(error, HttpResponseError) and error.error is not None:
        text = f"{error.error.code}: {error.error.message}"
    else:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return " ".join(text.split())


def _made_by_machines(tags: dict[str, str] | None) -> bool:
    return (tags or {}).get("machines-created") == "true"


def parse_open_port(value: str) -> tuple[int, str]:
    """``port[/proto]`` -> (port, NSG protocol name)."""
    port_text, _, protocol = value.partition("/")
    protocol = (protocol or "tcp").lower()
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or protocol not in ("tcp", "udp"):
        raise PreCreateError(f"--azure-open-port {value!r}: expected PORT or PORT/tcp or PORT/udp")
    return int(port_text), protocol.capitalize()


def parse_tags(values: list[str]) -> dict[str, str]:
    """``key=value`` items (repeatable, or comma-separated) -> Azure tags."""
    tags: dict[str, str] = {}
    for item in (item for value in values for item in value.split(",") if item):
        key, equals, tag_value = item.partition("=")
        if not equals or not key:
            raise PreCreateError(f"--azure-tags {item!r}: expected key=value")
        tags[key] = tag_value
    return tags


def _throwaway_rsa_key() -> str:
    """An RSA public key whose private half is thrown away: fills ``publicKeys`` (which Azure requires, RSA only)
    without giving access to anyone."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def parse_image(value: str) -> tuple[str, str, str, str]:
    """``publisher:offer:sku:version`` (Azure CLI's URN) -> its four parts."""
    parts = value.split(":")
    if len(parts) != 4 or not all(parts):
        raise PreCreateError(f"--azure-image {value!r}: expected publisher:offer:sku:version, e.g. {DEFAULT_IMAGE}")
    return parts[0], parts[1], parts[2], parts[3]


class _ServedApiVersions:
    """An azure-core pipeline policy: a request whose api-version its provider does not serve in this cloud is sent
    with the newest served version before it (the sovereign clouds lag the versions the SDKs send by default)."""

    next: Any = None  # the pipeline sets the policy that follows

    def __init__(self, served: Callable[[str, str], list[str]]) -> None:
        self._served = served

    def send(self, request: Any) -> Any:
        url = urllib.parse.urlsplit(request.http_request.url)
        query = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        match = re.search(r"/providers/(Microsoft\.[A-Za-z]+)/([^?]*)", url.path, re.IGNORECASE)
        current = dict(query).get("api-version")
        if match and current:
            segments = match.group(2).split("/")
            kind = f"locations/{segments[2]}" if segments[0].lower() == "locations" and len(segments) > 2 else segments[0]
            served = self._served(match.group(1).lower(), kind.lower())
            if served and current not in served:
                older = [version for version in served if version <= current]
                chosen = max(older or served)
                query = [(key, chosen if key == "api-version" else value) for key, value in query]
                request.http_request.url = urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(query)))
        return self.next.send(request)


class AzureDriver(Driver):
    """Hosts on Microsoft Azure virtual machines through the azure-mgmt-* SDKs."""

    name = "azure"
    cloud_config_flag = "custom_data"  # --cloud-config FILE; --azure-custom-data stays its alias
    description = "Microsoft Azure virtual machines (Docker Machine's azure flags)"
    flags = [
        Flag("subscription-id", "subscription to create in (required)", envvar="AZURE_SUBSCRIPTION_ID"),
        # No envvar on the credentials: DefaultAzureCredential reads AZURE_TENANT_ID, AZURE_CLIENT_ID and
        # AZURE_CLIENT_SECRET itself at each command, so they never reach the machine's config.json.
        Flag("tenant-id", "tenant (directory) of the service principal"),
        Flag("client-id", "service principal application id (default: DefaultAzureCredential)"),
        Flag("client-secret", "service principal secret", secret=True),
        Flag("environment", f"Azure cloud: {', '.join(ENVIRONMENTS)}", default="AzurePublicCloud",
             envvar="AZURE_ENVIRONMENT"),
        Flag("endpoint", "Resource Manager URL (default: the environment's)", envvar="AZURE_ENDPOINT"),
        Flag("authority-host", "Entra ID login URL (default: the environment's)", envvar="AZURE_AUTHORITY_HOST"),
        Flag("ca-bundle", "CA certificates file to verify Azure's endpoints with (default: the system's)",
             envvar="AZURE_CA_BUNDLE"),
        Flag("resource-group", "resource group (created if missing; removed by rm only if machines created it "
             "and it is empty)", default="machines", envvar="AZURE_RESOURCE_GROUP"),
        Flag("location", "region", default="westus", envvar="AZURE_LOCATION"),
        Flag("size", "VM size", default="Standard_B2s", envvar="AZURE_SIZE"),
        Flag("image", "image URN publisher:offer:sku:version", default=DEFAULT_IMAGE, envvar="AZURE_IMAGE"),
        Flag("vnet", "virtual network, [resourcegroup:]name (created if missing)", default="machines-vnet",
             envvar="AZURE_VNET"),
        Flag("subnet", "subnet of the vnet (created if missing)", default="machines-subnet", envvar="AZURE_SUBNET"),
        Flag("subnet-prefix", "address range of a subnet (and vnet) machines creates", default="192.168.0.0/16",
             envvar="AZURE_SUBNET_PREFIX"),
        Flag("private-ip-address", "static private IPv4 address in the subnet", envvar="AZURE_PRIVATE_IP_ADDRESS"),
        Flag("use-private-ip", "connect through the private address", type=bool, default=False,
             envvar="AZURE_USE_PRIVATE_IP"),
        Flag("no-public-ip", "no public IP address at all (implies --azure-use-private-ip)", type=bool,
             default=False, envvar="AZURE_NO_PUBLIC_IP"),
        Flag("static-public-ip", "accepted for Docker Machine compatibility: Standard public IPs are always static",
             type=bool, default=False, envvar="AZURE_STATIC_PUBLIC_IP"),
        Flag("open-port", "extra port[/proto] to open in the NSG (repeatable)", type=list),
        Flag("allow-cidr", "source CIDR allowed through the NSG (repeatable; default: anywhere, with a warning)",
             type=list, envvar="AZURE_ALLOW_CIDR"),
        Flag("ssh-user", "admin user of the VM (root is not allowed on Azure)", default="machines",
             envvar="AZURE_SSH_USER"),
        Flag("custom-data", "file of extra custom data (script or cloud-config), run after ours",
             envvar="AZURE_CUSTOM_DATA"),
        Flag("disk-size", "OS disk size in GiB", type=int, default=30, envvar="AZURE_DISK_SIZE"),
        Flag("storage-type", "OS disk type", default="StandardSSD_LRS", envvar="AZURE_STORAGE_TYPE"),
        Flag("tags", "extra tags key=value (repeatable)", type=list, envvar="AZURE_TAGS"),
        Flag("poll-interval", "seconds between polls of Azure's long-running operations", type=int, default=5),
        Flag("wait-timeout", "seconds to wait for each Azure operation", type=int, default=600,
             envvar="AZURE_WAIT_TIMEOUT"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._credential: TokenCredential | None = None
        self._clients: dict[type, Any] = {}
        self._provider_cache: dict[str, Any] | None = None

    # -- configuration ---------------------------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        return self.config.get(key)

    @property
    def group(self) -> str:
        return self._get("resource_group") or "machines"

    @property
    def vnet_group_and_name(self) -> tuple[str, str]:
        group, _, name = str(self._get("vnet")).rpartition(":")
        return group or self.group, name

    @property
    def timeout(self) -> float:
        return float(self._get("wait_timeout") or 600)

    def _name(self, suffix: str) -> str:
        """Our resources are named after the machine, so rm finds them again even after an interrupted create."""
        return f"{self.machine_name}-{suffix}"

    def _endpoints(self) -> tuple[str, str]:
        environment = self._get("environment") or "AzurePublicCloud"
        if environment not in ENVIRONMENTS:
            raise PreCreateError(f"--azure-environment {environment!r}: expected one of {', '.join(ENVIRONMENTS)}")
        arm, login = ENVIRONMENTS[environment]
        return (self._get("endpoint") or arm).rstrip("/"), (self._get("authority_host") or login).rstrip("/")

    def _transport_options(self) -> dict[str, Any]:
        return {"connection_verify": self._get("ca_bundle")} if self._get("ca_bundle") else {}

    def _credentials(self) -> TokenCredential:
        """A service principal when its flags are given, else DefaultAzureCredential (never a device-code prompt)."""
        if self._credential is None:
            from azure.identity import ClientSecretCredential, DefaultAzureCredential

            arm, authority = self._endpoints()
            options: dict[str, Any] = {"authority": authority, **self._transport_options()}
            if authority not in (login for _, login in ENVIRONMENTS.values()):
                options["disable_instance_discovery"] = True  # a private authority: do not ask Microsoft about it
            # azure-identity logs each failed login as a warning; the error we raise says it once, on one line.
            logging.getLogger("azure.identity").setLevel(logging.ERROR)
            principal = [self._get(key) for key in ("tenant_id", "client_id", "client_secret")]
            if all(principal):
                self._credential = ClientSecretCredential(*principal, **options)
            elif self._get("client_secret"):
                raise PreCreateError("--azure-client-secret needs --azure-client-id and --azure-tenant-id")
            else:
                self._credential = DefaultAzureCredential(exclude_interactive_browser_credential=True, **options)
        return self._credential

    def _client(self, kind: type, *, versions: bool = True) -> Any:
        """One management client of each kind per driver, made on first use; ``versions``: with the policy that
        keeps each request to an api-version the cloud serves."""
        if kind not in self._clients:
            arm, _ = self._endpoints()
            policies = [_ServedApiVersions(self._served_versions)] if versions else []
            self._clients[kind] = kind(
                self._credentials(),
                self._get("subscription_id"),
                base_url=arm,
                credential_scopes=[f"{arm}/.default"],
                polling_interval=int(self._get("poll_interval") if self._get("poll_interval") is not None else 5),
                per_call_policies=policies,
                **self._transport_options(),
            )
        return self._clients[kind]

    def _providers(self) -> dict[str, Any]:
        """The resource providers the driver uses, as this subscription sees them (read once per command)."""
        if self._provider_cache is None:
            self._provider_cache = {namespace.lower(): self._provider(namespace) for namespace in PROVIDERS}
        return self._provider_cache

    def _provider(self, namespace: str) -> Any:
        return self._call(f"read the {namespace} provider", lambda: self.resources.providers.get(namespace))

    def _served_versions(self, namespace: str, resource_type: str) -> list[str]:
        """The api-versions the cloud serves for a resource type (empty: it does not say, send the SDK's)."""
        provider = self._providers().get(namespace)
        for entry in (provider.resource_types if provider else None) or []:
            if (entry.resource_type or "").lower() == resource_type:
                return list(entry.api_versions or [])
        return []

    @property
    def resources(self) -> ResourceManagementClient:
        """Resource groups and providers: served alike by every cloud (and read to learn what the others serve)."""
        from azure.mgmt.resource.resources import ResourceManagementClient

        return self._client(ResourceManagementClient, versions=False)

    @property
    def network(self) -> NetworkManagementClient:
        from azure.mgmt.network import NetworkManagementClient

        return self._client(NetworkManagementClient)

    @property
    def compute(self) -> ComputeManagementClient:
        from azure.mgmt.compute import ComputeManagementClient

        return self._client(ComputeManagementClient)

    def _call(self, what: str, call: Callable[[], Any], *, missing_ok: bool = False,
              retry_codes: tuple[str, ...] = ()) -> Any:
        """One Azure call (a poller is waited for); failures become a one-line ``DriverError`` naming ``what``.

        With ``missing_ok`` a resource that does not exist (HTTP 404) gives None instead. An error whose ARM code is
        in ``retry_codes`` (a state Azure keeps for a while) is retried every few seconds until the wait timeout.
        """
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )
        from azure.core.polling import LROPoller

        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    result = call()
                    if isinstance(result, LROPoller):
                        result.wait(self.timeout)
                        if not result.done():
                            raise MachineTimeoutError(f"timed out after {self.timeout:.0f}s waiting for Azure to {what}")
                        return result.result()
                    return result
                except HttpResponseError as error:
                    code = error.error.code if error.error is not None else None
                    if code not in retry_codes or time.monotonic() >= deadline:
                        raise
                    log.info("%s: Azure answered %s to %s; retrying", self.machine_name, code, what)
                    time.sleep(min(5.0, max(0.5, deadline - time.monotonic())))
        except ResourceNotFoundError as error:
            if missing_ok:
                return None
            raise DriverError(f"Azure could not {what}: {_one_line(error)}") from None
        except ClientAuthenticationError as error:  # CredentialUnavailableError included
            raise DriverError(f"Azure login failed: {_one_line(error)}") from None
        except AzureError as error:
            raise DriverError(f"Azure could not {what}: {_one_line(error)}") from None

    def _find(self, what: str, call: Callable[[], Any]) -> Any:
        return self._call(what, call, missing_ok=True)

    def _delete(self, what: str, call: Callable[[], Any], retry_codes: tuple[str, ...] = ()) -> None:
        """Delete and wait; already gone is fine (an undo may run for a step whose call never reached Azure)."""
        self._call(f"delete {what}", call, missing_ok=True, retry_codes=retry_codes)

    # -- pre-create ------------------------------------------------------------------------------------------
    def pre_create_check(self) -> None:
        """Flags, credentials, location, size, image and free names, before anything exists in Azure."""
        try:
            self._check_flags()
            self._check_credentials()
            self._check_providers()
            self._check_location()
            self._check_size()
            self._check_image()
            self._check_names_free()
            self._check_network()
        except PreCreateError:
            raise
        except DriverError as error:
            raise PreCreateError(str(error)) from None

    def _check_flags(self) -> None:
        if not self._get("subscription_id"):
            raise PreCreateError("--azure-subscription-id is required (or set AZURE_SUBSCRIPTION_ID)")
        arm, authority = self._endpoints()
        for url, flag in ((arm, "--azure-endpoint"), (authority, "--azure-authority-host")):
            if not url.startswith("https://"):
                raise PreCreateError(f"{flag} {url!r}: Azure needs an https:// URL")
        if self._get("ca_bundle") and not os.path.isfile(self._get("ca_bundle")):
            raise PreCreateError(f"--azure-ca-bundle {self._get('ca_bundle')}: no such file")
        if str(self._get("ssh_user")).lower() in RESERVED_USERS:
            raise PreCreateError(f"--azure-ssh-user {self._get('ssh_user')} is not allowed on Azure; pick another name")
        for cidr in self._get("allow_cidr") or []:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise PreCreateError(f"--azure-allow-cidr {cidr!r} is not a CIDR such as 203.0.113.0/24") from None
        for port in self._get("open_port") or []:
            parse_open_port(port)
        parse_tags(self._get("tags") or [])
        parse_image(self._get("image") or DEFAULT_IMAGE)
        try:
            ipaddress.ip_network(self._get("subnet_prefix"))
        except (TypeError, ValueError):
            raise PreCreateError(f"--azure-subnet-prefix {self._get('subnet_prefix')!r} is not a CIDR") from None
        if self._get("private_ip_address"):
            try:
                ipaddress.IPv4Address(self._get("private_ip_address"))
            except ValueError:
                raise PreCreateError(f"--azure-private-ip-address {self._get('private_ip_address')!r} is not an IPv4 address") from None
        if self._get("no_public_ip") and self._get("static_public_ip"):
            raise PreCreateError("--azure-no-public-ip and --azure-static-public-ip contradict each other")
        if int(self._get("disk_size") or 0) < 1:
            raise PreCreateError("--azure-disk-size must be a positive number of GiB")
        custom = self._get("custom_data")
        if custom:
            user_part(read_user_data(custom, CUSTOM_DATA_FLAG), CUSTOM_DATA_FLAG)  # refuses what cannot be merged
            # ours with a throwaway host key (ed25519 keys have one size): the size the create will send
            self._encoded_custom_data(*generate_host_key(), "ssh-ed25519 " + "A" * 68)
        if not VM_NAME.fullmatch(self.machine_name):
            raise PreCreateError(f"machine name {self.machine_name!r} is not one Azure takes for a Linux VM: at most 64 "
                                 "letters, digits and dashes, starting and ending with a letter or digit")

    def _check_credentials(self) -> None:
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        arm, _ = self._endpoints()
        try:
            self._credentials().get_token(f"{arm}/.default")
        except ClientAuthenticationError as error:
            raise PreCreateError(
                f"Azure login failed ({_one_line(error)}); pass --azure-client-id, --azure-client-secret and "
                "--azure-tenant-id, or log in with 'az login'"
            ) from None
        except AzureError as error:
            raise PreCreateError(f"Azure login failed: {_one_line(error)}") from None

    def _check_providers(self) -> None:
        """A subscription must be registered for a resource provider before it can make its resources."""
        for namespace in PROVIDERS:
            state = self._providers()[namespace.lower()].registration_state or ""
            if state.lower() != "registered":
                raise PreCreateError(f"the subscription is not registered for {namespace} ({state or 'unknown'}); "
                                     f"register it with 'az provider register --namespace {namespace}'")

    def _check_location(self) -> None:
        """The location must be one where the subscription can make VMs (names compared as ARM does)."""
        location = str(self._get("location")).lower().replace(" ", "")
        provider = self._providers()["microsoft.compute"]
        known = {
            name.lower().replace(" ", "")
            for resource_type in provider.resource_types or []
            if (resource_type.resource_type or "").lower() == "virtualmachines"
            for name in resource_type.locations or []
        }
        if location not in known:
            raise PreCreateError(f"unknown Azure location {self._get('location')!r}; known: {', '.join(sorted(known))}")
        self.config["location"] = location

    def _check_size(self, size: str | None = None) -> None:
        """The size must be a VM SKU of the region that this subscription may use (its restrictions say why not)."""
        location, size = self._get("location"), size or self._get("size")
        skus = self._call("list the resource SKUs", lambda: [
            sku for sku in self.compute.resource_skus.list(filter=f"location eq '{location}'")
            if (sku.resource_type or "").lower() == "virtualmachines" and sku.name == size
            and location in {name.lower() for name in sku.locations or []}])
        if not skus:
            raise PreCreateError(f"--azure-size {size!r} does not exist in {location}")
        reasons = [getattr(restriction.reason_code, "value", restriction.reason_code) or "restricted"
                   for restriction in skus[0].restrictions or []
                   if (restriction.type or "").lower() == "location"
                   and location in {value.lower() for value in restriction.values_property or []}]
        if reasons:
            raise PreCreateError(f"--azure-size {size!r} is not available to this subscription in {location} "
                                 f"({reasons[0]}); pick another size or location")

    def _check_image(self) -> None:
        publisher, offer, sku, version = parse_image(self._get("image") or DEFAULT_IMAGE)
        images = self.compute.virtual_machine_images
        location = self._get("location")
        if version == "latest":
            found = self._find("list image versions", lambda: images.list(location, publisher, offer, sku))
        else:
            found = self._find("read the image", lambda: images.get(location, publisher, offer, sku, version))
        if not found:
            raise PreCreateError(f"--azure-image {self._get('image')!r} does not exist in {location}")

    def _check_names_free(self) -> None:
        """Nothing of ours may exist yet under our names: rm would delete someone else's resource."""
        if not self._call("read the resource group", lambda: self.resources.resource_groups.check_existence(self.group)):
            return
        taken = [
            what for what, exists in (
                (f"VM {self.machine_name}", lambda: self.compute.virtual_machines.get(self.group, self.machine_name)),
                (f"NSG {self._name('nsg')}", lambda: self.network.network_security_groups.get(self.group, self._name("nsg"))),
                (f"public IP {self._name('ip')}", lambda: self.network.public_ip_addresses.get(self.group, self._name("ip"))),
                (f"NIC {self._name('nic')}", lambda: self.network.network_interfaces.get(self.group, self._name("nic"))),
            )
            if self._find(f"read {what}", exists) is not None
        ]
        if taken:
            raise PreCreateError(f"resource group {self.group} already has {', '.join(taken)}")

    def _check_network(self) -> None:
        """A static private address must lie in the subnet: the existing one's range, else the one we would make."""
        vnet_group, vnet = self.vnet_group_and_name
        group_exists = self._call("read the vnet's group", lambda: self.resources.resource_groups.check_existence(vnet_group))
        if not group_exists and vnet_group != self.group:
            raise PreCreateError(f"--azure-vnet {self._get('vnet')}: resource group {vnet_group} does not exist")
        existing = self._find("read the vnet", lambda: self.network.virtual_networks.get(vnet_group, vnet)) \
            if group_exists else None
        if existing is not None and (existing.location or "").lower().replace(" ", "") != self._get("location"):
            raise PreCreateError(f"--azure-vnet {self._get('vnet')} is in {existing.location}, the machine would be in "
                                 f"{self._get('location')}: a VM's network interface must be in its vnet's region")
        subnet = self._find(
            "read the subnet", lambda: self.network.subnets.get(vnet_group, vnet, self._get("subnet"))
        ) if group_exists else None
        if subnet is None:
            prefix, where = ipaddress.ip_network(self._get("subnet_prefix")), "--azure-subnet-prefix"
        else:
            prefix = ipaddress.ip_network(subnet.address_prefix or (subnet.address_prefixes or [""])[0])
            where = f"subnet {self._get('subnet')}"
        address = self._get("private_ip_address")
        if address and ipaddress.IPv4Address(address) not in prefix:
            raise PreCreateError(f"--azure-private-ip-address {address} is outside {where} ({prefix})")

    # -- create ----------------------------------------------------------------------------------------------
    def create(self, ledger: Ledger) -> None:
        """Group -> NSG -> vnet/subnet -> public IP -> NIC -> VM, each recorded before the call that makes it."""
        if not self._credential:
            self.pre_create_check()
        self.config["machine_id"] = self.config.get("machine_id") or uuid.uuid4().hex
        self._create_group(ledger)
        nsg = self._create_nsg(ledger)
        subnet = self._create_network(ledger)
        public_ip = None if self._get("no_public_ip") else self._create_public_ip(ledger)
        nic = self._create_nic(ledger, nsg, subnet, public_ip)
        self._create_vm(ledger, nic)
        self.config["private_ip"] = nic.ip_configurations[0].private_ip_address
        self.config["public_ip"] = public_ip.ip_address if public_ip else None

    def _tags(self) -> dict[str, str]:
        return {"machines-name": self.machine_name, "machines-id": self.config["machine_id"],
                **parse_tags(self._get("tags") or [])}

    def _create_group(self, ledger: Ledger) -> None:
        from azure.mgmt.resource.resources import models as resources

        if self._call("read the resource group", lambda: self.resources.resource_groups.check_existence(self.group)):
            return
        ledger.record(f"Azure resource group {self.group}", self._delete_group)
        group = resources.ResourceGroup(location=self._get("location"), tags=SHARED_TAG)
        self._call(f"create resource group {self.group}",
                   lambda: self.resources.resource_groups.create_or_update(self.group, group))

    def _create_nsg(self, ledger: Ledger) -> network_models.NetworkSecurityGroup:
        from azure.mgmt.network import models as network

        cidrs = self._get("allow_cidr") or []
        tls = self.api_over_tls()
        if not cidrs:
            log.warning("%s: SSH%s open to the Internet; restrict with --azure-allow-cidr", self.machine_name,
                        " and the TLS API port" if tls else "")
        ports = [(SSH_PORT, "Tcp")] + ([(TLS_API_PORT, "Tcp")] if tls else [])
        ports += [parse_open_port(value) for value in self._get("open_port") or []]
        sources = {"source_address_prefixes": cidrs} if cidrs else {"source_address_prefix": ANYWHERE}
        rules = [
            network.SecurityRule(
                name=f"allow-{protocol.lower()}-{port}", priority=100 + index * 10, direction="Inbound",
                access="Allow", protocol=protocol, source_port_range="*", destination_address_prefix="*",
                destination_port_range=str(port), **sources,
            )
            for index, (port, protocol) in enumerate(dict.fromkeys(ports))
        ]
        body = network.NetworkSecurityGroup(location=self._get("location"), security_rules=rules, tags=self._tags())
        ledger.record(f"Azure NSG {self._name('nsg')}", self._delete_nsg)
        return self._call(f"create NSG {self._name('nsg')}",
                          lambda: self.network.network_security_groups.begin_create_or_update(self.group, self._name("nsg"), body))

    def _create_network(self, ledger: Ledger) -> network_models.Subnet:
        from azure.mgmt.network import models as network

        """Use the vnet and subnet when they exist; make what is missing (recorded, removed by rm when unused)."""
        vnet_group, vnet_name = self.vnet_group_and_name
        subnet_name, prefix = self._get("subnet"), self._get("subnet_prefix")
        vnet = self._find("read the vnet", lambda: self.network.virtual_networks.get(vnet_group, vnet_name))
        if vnet is None:
            ledger.record(f"Azure vnet {vnet_name}", self._delete_vnet)
            body = network.VirtualNetwork(
                location=self._get("location"), address_space=network.AddressSpace(address_prefixes=[prefix]),
                subnets=[network.Subnet(name=subnet_name, address_prefix=prefix)], tags=SHARED_TAG,
            )
            self._call(f"create vnet {vnet_name}",
                       lambda: self.network.virtual_networks.begin_create_or_update(vnet_group, vnet_name, body))
        elif not any(subnet.name == subnet_name for subnet in vnet.subnets or []):
            self.config["created_subnet"] = True
            ledger.record(f"Azure subnet {subnet_name}", self._delete_subnet)
            self._call(f"create subnet {subnet_name}", lambda: self.network.subnets.begin_create_or_update(
                vnet_group, vnet_name, subnet_name, network.Subnet(address_prefix=prefix)))
        return self._call("read the subnet", lambda: self.network.subnets.get(vnet_group, vnet_name, subnet_name))

    def _create_public_ip(self, ledger: Ledger) -> network_models.PublicIPAddress:
        from azure.mgmt.network import models as network

        body = network.PublicIPAddress(
            location=self._get("location"), sku=network.PublicIPAddressSku(name="Standard"),
            public_ip_allocation_method="Static", tags=self._tags(),
        )
        ledger.record(f"Azure public IP {self._name('ip')}", self._delete_public_ip)
        return self._call(f"create public IP {self._name('ip')}",
                          lambda: self.network.public_ip_addresses.begin_create_or_update(self.group, self._name("ip"), body))

    def _create_nic(self, ledger: Ledger, nsg: network_models.NetworkSecurityGroup, subnet: network_models.Subnet,
                    public_ip: network_models.PublicIPAddress | None) -> network_models.NetworkInterface:
        from azure.mgmt.network import models as network

        address = self._get("private_ip_address")
        configuration = network.NetworkInterfaceIPConfiguration(
            name="ipconfig1", subnet=network.Subnet(id=subnet.id),
            private_ip_allocation_method="Static" if address else "Dynamic", private_ip_address=address or None,
            public_ip_address=network.PublicIPAddress(id=public_ip.id) if public_ip else None,
        )
        body = network.NetworkInterface(
            location=self._get("location"), ip_configurations=[configuration],
            network_security_group=network.NetworkSecurityGroup(id=nsg.id), tags=self._tags(),
        )
        ledger.record(f"Azure NIC {self._name('nic')}", self._delete_nic)
        return self._call(f"create NIC {self._name('nic')}",
                          lambda: self.network.network_interfaces.begin_create_or_update(self.group, self._name("nic"), body))

    def _custom_data(self) -> str:
        host_private, host_public = generate_host_key()
        self.config["host_key"] = host_public
        return self._encoded_custom_data(host_private, host_public, public_key_of(self.ssh_key_path))

    def _encoded_custom_data(self, host_private: str, host_public: str, authorized_key: str) -> str:
        """Our cloud-config (with the machine's key: the one that lets us in) plus theirs, base64, within ARM's limit."""
        ours = cloud_config(authorized_key, host_private, host_public, self._get("ssh_user"))
        custom = self._get("custom_data")
        theirs = read_user_data(custom, CUSTOM_DATA_FLAG) if custom else None
        encoded = base64.b64encode(merge_user_data(ours, theirs, CUSTOM_DATA_FLAG).encode()).decode()
        if len(encoded) > CUSTOM_DATA_LIMIT:
            raise PreCreateError(f"{CUSTOM_DATA_FLAG}: custom data is {len(encoded)} characters in base64, Azure "
                                 f"allows {CUSTOM_DATA_LIMIT}")
        return encoded

    def _create_vm(self, ledger: Ledger, nic: network_models.NetworkInterface) -> None:
        from azure.mgmt.compute import models as compute

        publisher, offer, sku, version = parse_image(self._get("image") or DEFAULT_IMAGE)
        user = self._get("ssh_user")
        body = compute.VirtualMachine(
            location=self._get("location"),
            tags=self._tags(),
            hardware_profile=compute.HardwareProfile(vm_size=self._get("size")),
            storage_profile=compute.StorageProfile(
                image_reference=compute.ImageReference(publisher=publisher, offer=offer, sku=sku, version=version),
                os_disk=compute.OSDisk(
                    name=self._name("osdisk"), create_option="FromImage", delete_option="Delete",
                    disk_size_gb=int(self._get("disk_size")),
                    managed_disk=compute.ManagedDiskParameters(storage_account_type=self._get("storage_type")),
                ),
            ),
            os_profile=compute.OSProfile(
                computer_name=self.machine_name, admin_username=user, custom_data=self._custom_data(),
                linux_configuration=compute.LinuxConfiguration(
                    disable_password_authentication=True,
                    # Azure wants an RSA key here (it refused ed25519): a throwaway one; ours is in the custom data
                    ssh=compute.SshConfiguration(public_keys=[compute.SshPublicKey(
                        path=f"/home/{user}/.ssh/authorized_keys", key_data=_throwaway_rsa_key())]),
                ),
            ),
            network_profile=compute.NetworkProfile(
                network_interfaces=[compute.NetworkInterfaceReference(id=nic.id, primary=True, delete_option="Delete")]
            ),
        )
        ledger.record(f"Azure VM {self.machine_name}", self._delete_vm)
        self._call(f"create VM {self.machine_name}",
                   lambda: self.compute.virtual_machines.begin_create_or_update(self.group, self.machine_name, body))
        log.info("%s: VM created in %s/%s", self.machine_name, self.group, self._get("location"))

    # -- removal (the ledger's undos and rm) -----------------------------------------------------------------
    def _delete_vm(self) -> None:
        self._delete(f"VM {self.machine_name}",
                     lambda: self.compute.virtual_machines.begin_delete(self.group, self.machine_name))
        self._delete(f"disk {self._name('osdisk')}", lambda: self.compute.disks.begin_delete(self.group, self._name("osdisk")))

    def _delete_nic(self) -> None:
        """After a failed VM create Azure keeps the NIC reserved for that VM (about 180 s): its delete is retried."""
        self._delete(f"NIC {self._name('nic')}",
                     lambda: self.network.network_interfaces.begin_delete(self.group, self._name("nic")),
                     retry_codes=(NIC_RESERVED,))

    def _delete_public_ip(self) -> None:
        self._delete(f"public IP {self._name('ip')}",
                     lambda: self.network.public_ip_addresses.begin_delete(self.group, self._name("ip")))

    def _delete_nsg(self) -> None:
        self._delete(f"NSG {self._name('nsg')}",
                     lambda: self.network.network_security_groups.begin_delete(self.group, self._name("nsg")))

    def _delete_subnet(self) -> None:
        """Only the subnet machines made, and only when no other NIC uses it."""
        vnet_group, vnet_name = self.vnet_group_and_name
        subnet = self._find("read the subnet", lambda: self.network.subnets.get(vnet_group, vnet_name, self._get("subnet")))
        if subnet is not None and not subnet.ip_configurations:
            self._delete(f"subnet {self._get('subnet')}",
                         lambda: self.network.subnets.begin_delete(vnet_group, vnet_name, self._get("subnet")))
        elif subnet is not None:
            log.warning("%s: subnet %s is still used by other NICs; kept", self.machine_name, self._get("subnet"))

    def _delete_vnet(self) -> None:
        """Only a vnet machines made, and only when none of its subnets is used (by this or another machine)."""
        vnet_group, vnet_name = self.vnet_group_and_name
        vnet = self._find("read the vnet", lambda: self.network.virtual_networks.get(vnet_group, vnet_name))
        if vnet is None or not _made_by_machines(vnet.tags):
            return
        if any(subnet.ip_configurations for subnet in vnet.subnets or []):
            log.info("%s: vnet %s is still used by other machines; kept", self.machine_name, vnet_name)
            return
        self._delete(f"vnet {vnet_name}", lambda: self.network.virtual_networks.begin_delete(vnet_group, vnet_name))

    def _delete_group(self) -> None:
        """Only a group machines made, and only when nothing is left in it."""
        group = self._find("read the resource group", lambda: self.resources.resource_groups.get(self.group))
        if group is None or not _made_by_machines(group.tags):
            return
        left = self._call("list the resource group", lambda: list(self.resources.resources.list_by_resource_group(self.group)))
        if left:
            log.info("%s: resource group %s still holds %d resources; kept", self.machine_name, self.group, len(left))
            return
        self._delete(f"resource group {self.group}", lambda: self.resources.resource_groups.begin_delete(self.group))

    def remove(self) -> None:
        """VM (with its OS disk), NIC, public IP, NSG, then what machines made of subnet, vnet and group."""
        self._delete_vm()
        self._delete_nic()
        self._delete_public_ip()
        self._delete_nsg()
        if self._get("created_subnet"):
            self._delete_subnet()
        self._delete_vnet()
        self._delete_group()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _power_state(self) -> str | None:
        """The VM's ``PowerState/...`` code without the prefix; None when the VM does not exist."""
        view = self._find("read the VM", lambda: self.compute.virtual_machines.instance_view(self.group, self.machine_name))
        if view is None:
            return None
        codes = [status.code or "" for status in view.statuses or []]
        if any(code == "ProvisioningState/failed" or code.startswith("ProvisioningState/failed/") for code in codes):
            return "failed"
        return next((code.split("/", 1)[1] for code in codes if code.startswith("PowerState/")), "unknown")

    def state(self) -> State:
        power = self._power_state()
        return State.NOT_FOUND if power is None else POWER_STATES.get(power, State.ERROR)

    def _vm_action(self, what: str, action: Callable[[], Any]) -> None:
        if self._power_state() is None:
            raise DriverError(f"Azure VM {self.machine_name} no longer exists in {self.group}")
        self._call(f"{what} VM {self.machine_name}", action)

    def start(self) -> None:
        self._vm_action("start", lambda: self.compute.virtual_machines.begin_start(self.group, self.machine_name))
        self._read_addresses()

    def stop(self) -> None:
        """Deallocate: the VM stops being billed (a merely powered-off VM still is); its disk and IP still are."""
        self._vm_action("deallocate", lambda: self.compute.virtual_machines.begin_deallocate(self.group, self.machine_name))
        log.warning("%s: deallocated: no compute charges while stopped (the disk and public IP are still billed)",
                    self.machine_name)

    def kill(self) -> None:
        self._vm_action("power off", lambda: self.compute.virtual_machines.begin_power_off(
            self.group, self.machine_name, skip_shutdown=True))

    def restart(self) -> None:
        self._vm_action("restart", lambda: self.compute.virtual_machines.begin_restart(self.group, self.machine_name))

    def change(self, flags: Mapping[str, Any]) -> None:
        """``machines set --azure-size``: resized only when deallocated, checked against the SKUs as create does.

        Azure can resize an allocated VM only to a size its current hardware cluster offers (and restarts it);
        deallocated, any size the subscription may use in the region is allowed, so that is the one state asked for.
        """
        if set(flags) != {"size"}:
            super().change({key: value for key, value in flags.items() if key != "size"})
        power = self._power_state()
        if power is None:
            raise DriverError(f"Azure VM {self.machine_name} no longer exists in {self.group}")
        if power != "deallocated":
            raise DriverError(f"Azure resizes a deallocated VM only ({self.machine_name} is {power}): run "
                              f"'machines stop {self.machine_name}' first")
        try:
            self._check_size(str(flags["size"]))
        except PreCreateError as error:
            raise DriverError(str(error)) from None
        from azure.mgmt.compute import models as compute

        update = compute.VirtualMachineUpdate(hardware_profile=compute.HardwareProfile(vm_size=str(flags["size"])))
        self._call(f"resize VM {self.machine_name}",
                   lambda: self.compute.virtual_machines.begin_update(self.group, self.machine_name, update))

    def _read_addresses(self) -> None:
        """Keep the VM's addresses in the config: Standard public IPs are static and a NIC keeps its private
        address until it is deleted, so ``env``, ``ssh`` and ``ip`` need no Azure call (nor the SDK's import)."""
        nic = self._find("read the NIC", lambda: self.network.network_interfaces.get(self.group, self._name("nic")))
        self.config["private_ip"] = nic.ip_configurations[0].private_ip_address if nic else None
        public = None if self._get("no_public_ip") else self._find(
            "read the public IP", lambda: self.network.public_ip_addresses.get(self.group, self._name("ip")))
        self.config["public_ip"] = public.ip_address if public else None

    def ip(self) -> str:
        private = self._get("use_private_ip") or self._get("no_public_ip")
        key = "private_ip" if private else "public_ip"
        if not self._get(key):
            self._read_addresses()
        if not self._get(key):
            raise DriverError(f"Azure VM {self.machine_name} has no {key.replace('_ip', '')} IP address")
        return str(self._get(key))

    def private_ip(self) -> str:
        """The NIC's address in the virtual network: what swarm members advertise to each other."""
        if not self._get("private_ip"):
            self._read_addresses()
        if not self._get("private_ip"):
            raise DriverError(f"Azure VM {self.machine_name} has no private IP address")
        return str(self._get("private_ip"))

    def open_cluster_ports(self, cluster: str, ports: Sequence[tuple[int, str]]) -> None:
        """Rules on this machine's NSG that admit ``ports`` from the virtual network only (the ``VirtualNetwork``
        service tag: the members' subnet, never the Internet); they go with ``close_cluster_ports``."""
        from azure.mgmt.network import models as network

        prefix = f"cluster-{cluster}-"
        self._change_nsg_rules(prefix, [
            network.SecurityRule(
                name=f"{prefix}{protocol.lower()}-{port}", priority=CLUSTER_RULE_PRIORITY + index, direction="Inbound",
                access="Allow", protocol=protocol.capitalize(), source_port_range="*",
                source_address_prefix="VirtualNetwork", destination_address_prefix="*", destination_port_range=str(port),
            )
            for index, (port, protocol) in enumerate(ports)
        ])  # fmt: skip

    def close_cluster_ports(self, cluster: str, *, last: bool) -> None:
        """Each member's rules are on its own NSG: leaving removes them, the last member's last."""
        self._change_nsg_rules(f"cluster-{cluster}-", [])

    def _change_nsg_rules(self, prefix: str, rules: list[Any]) -> None:
        """Replace the rules of this machine's NSG whose names start with ``prefix`` by ``rules``."""
        name = self._name("nsg")
        nsg = self._call(f"read NSG {name}", lambda: self.network.network_security_groups.get(self.group, name))
        nsg.security_rules = [rule for rule in nsg.security_rules or [] if not rule.name.startswith(prefix)] + rules
        self._call(f"update NSG {name}",
                   lambda: self.network.network_security_groups.begin_create_or_update(self.group, name, nsg))

    def ssh_details(self) -> SSHDetails:
        return SSHDetails(host=self.ip(), port=SSH_PORT, user=self._get("ssh_user") or "machines", key_path=self.ssh_key_path)

    def initial_host_key(self) -> str | None:
        return cast("str | None", self._get("host_key"))
