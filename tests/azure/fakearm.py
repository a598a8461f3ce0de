"""A fake Azure Resource Manager the tests own: enough of ARM (and of Entra ID's token endpoint) for the driver.

The real azure-mgmt-* SDKs and azure-identity talk to it over HTTPS (a self-signed certificate for 127.0.0.1 made
here), so the driver's request building, long-running-operation polling and error parsing are the SDK's own. It
keeps resources as ARM JSON in memory and enforces the rules whose violation would mean a leak or a wrong order:
a NIC held by a VM, a public IP or NSG held by a NIC, a subnet holding NICs cannot be deleted; references must
exist; a static private address must lie in its subnet and be free.

Mutating calls answer with the long-running-operation headers ARM sends for each of them: a resource group PUT is
synchronous and its DELETE is ``202`` with ``Location`` only; other PUTs are ``201``/``200`` with
``Azure-AsyncOperation``; other DELETEs and VM actions are ``202`` with both ``Azure-AsyncOperation`` and
``Location``; every 201/202 and in-progress poll carries ``Retry-After``. An operation is ``InProgress`` at the first
poll and ``Succeeded`` (or ``Failed``, for an injected fault) after; a ``Location`` poll is ``202`` until then.

It is as strict as Azure where the driver must cope (each rule configurable on the instance):

* the resource SKUs API lists each VM size with this subscription's restrictions (``restricted_sizes``), and a VM
  of a restricted size is refused with ``SkuNotAvailable``;
* after a VM create fails, its NIC stays reserved for that VM for ``nic_reservation_seconds`` (Azure: 180):
  deleting it or giving it to another VM is refused with ``NicReservedForAnotherVm``;
* ``publicKeys`` takes RSA keys of 2048 bits or more only (ed25519 refused, as Azure did), custom data at most
  87380 base64 characters (64 KiB), VM names and Linux computer names by Azure's rules;
* a NIC must be in its vnet's region; a namespace in ``unregistered`` refuses PUTs with
  ``MissingSubscriptionRegistration``;
* ``cloud`` picks the api-versions served per provider namespace (US Government and China lag public Azure): any
  other is refused with ``NoRegisteredProviderFound``, as ARM does.

``listener`` hears about VM lifecycle changes so a data plane can run a real host behind each VM.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOCATIONS = {"westus": "West US", "eastus": "East US", "westeurope": "West Europe"}
SIZES = ["Standard_B1s", "Standard_B2s", "Standard_D2s_v5"]
IMAGES: dict[tuple[str, str, str], list[str]] = {  # (publisher, offer, sku) -> versions, oldest first
    ("debian", "debian-12", "12-gen2"): ["0.20240211.1654", "0.20250113.1979"],
    ("canonical", "ubuntu-24_04-lts", "server"): ["24.04.202501140"],
}
PUBLIC_RANGE = ipaddress.ip_network("198.18.0.0/24")  # benchmark range: looks public, never routed from here
# The api-versions each cloud serves per provider namespace; None: any (public Azure serves what the SDKs send).
# The sovereign clouds' lists end earlier, as theirs do.
SERVED_VERSIONS: dict[str, dict[str, list[str]] | None] = {
    "AzurePublicCloud": None,
    "AzureUSGovernmentCloud": {
        "microsoft.compute": ["2021-07-01", "2023-04-02", "2023-09-01", "2024-03-01", "2024-07-01"],
        "microsoft.network": ["2023-09-01", "2024-01-01", "2024-03-01", "2024-05-01"],
    },
    "AzureChinaCloud": {
        "microsoft.compute": ["2021-07-01", "2022-03-02", "2023-04-02", "2023-09-01", "2024-03-01"],
        "microsoft.network": ["2023-06-01", "2023-09-01", "2024-01-01"],
    },
}
PROVIDER_TYPES = {  # resource types each provider namespace lists (the ones the driver uses)
    "microsoft.compute": ("Microsoft.Compute", ["virtualMachines", "disks", "skus", "locations/vmSizes",
                                                "locations/publishers"]),
    "microsoft.network": ("Microsoft.Network", ["networkSecurityGroups", "virtualNetworks", "publicIPAddresses",
                                                "networkInterfaces"]),
}
CUSTOM_DATA_LIMIT = 87380  # base64 characters: 64 KiB of data
VM_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?")
LINUX_COMPUTER_NAME_FORBIDDEN = set("~!@#$%^&*()=+_[]{}\\|;:.'\",<>/?")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``127.0.0.1`` (its own CA): returns (cert path, key path), key written 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-arm")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "arm.pem", directory / "arm-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ArmError(Exception):
    """An ARM error answer: HTTP status, ARM error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class VMListener(Protocol):
    """What a data plane implements to follow VMs; called before the operation reports success."""

    def vm_created(self, vm: dict[str, Any], private_ip: str) -> None: ...
    def vm_power(self, vm: dict[str, Any], running: bool) -> None: ...
    def vm_deleted(self, vm: dict[str, Any]) -> None: ...


@dataclass
class Fault:
    """Fail the next request matching ``method`` and ``path`` (a regex on the lower-cased path).

    ``in_operation``: the request is carried out but its long-running operation ends ``Failed`` (as when a VM
    fails to provision after ARM accepted it), so the resource exists although the call failed.
    """

    method: str
    path: str
    status: int = 409  # not one the SDK retries
    code: str = "OperationNotAllowed"
    in_operation: bool = False
    fired: bool = False


@dataclass
class Operation:
    polls: int = 0
    error: tuple[str, str] | None = None


@dataclass
class FakeArm:
    """The fake's state and HTTPS server. ``tenant``, ``client_id``, ``client_secret`` are the only valid login."""

    directory: Path
    subscription: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: uuid.uuid4().hex)
    listener: VMListener | None = None

    def __post_init__(self) -> None:
        self.strict_defaults()
        self.resources: dict[str, dict[str, Any]] = {}  # lower-cased id -> resource JSON
        self.operations: dict[str, Operation] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.refused: list[str] = []  # ARM error codes answered, in order: tests look
        self.lock = threading.RLock()
        self.token = uuid.uuid4().hex
        self.ca_path, key_path = make_certificate(self.directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_path, key_path)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.arm = self  # type: ignore[attr-defined]
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake arm", daemon=True)
        self._thread.start()

    def strict_defaults(self) -> None:
        """Azure's own settings, except the waits: a test sets a short NIC reservation and no Retry-After delay."""
        self.cloud = "AzurePublicCloud"
        self.restricted_sizes: dict[str, dict[str, str]] = {}  # location -> size -> restriction reason code
        # Sizes the hardware cluster of a running (allocated) VM offers: a resize to another one needs a deallocation.
        self.cluster_sizes = ["Standard_B1s", "Standard_B2s"]
        self.unregistered: set[str] = set()  # lower-cased provider namespaces
        self.nic_reservation_seconds = 180.0
        self.retry_after = 0
        self.reserved_nics: dict[str, tuple[float, str]] = {}  # NIC id (lower) -> (monotonic end, VM id)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def reset(self) -> None:
        with self.lock:
            self.resources.clear()
            self.operations.clear()
            self.faults.clear()
            self.requests.clear()
            self.refused.clear()
            self.listener = None
            self.strict_defaults()

    def fail(self, method: str, path: str, **options: Any) -> Fault:
        fault = Fault(method, path, **options)
        self.faults.append(fault)
        return fault

    # -- what tests inspect ----------------------------------------------------------------------------------
    def ids(self, type_name: str = "") -> list[str]:
        """Ids of every resource (resource groups included), or of one type such as ``virtualMachines``."""
        with self.lock:
            return sorted(resource["id"] for resource in self.resources.values()
                          if resource["type"].lower().endswith(type_name.lower()))

    def get(self, resource_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.resources.get(resource_id.lower())

    def find(self, type_name: str) -> dict[str, Any]:
        """The one resource of a type (tests make one machine at a time)."""
        found = [self.resources[key.lower()] for key in self.ids(type_name)]
        assert len(found) == 1, f"expected one {type_name}, found {[item['id'] for item in found]}"
        return found[0]

    # -- request handling ----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.requests.append((method, path))
            if "/oauth2/" in path or "/.well-known/" in path or path.endswith("/discovery/instance"):
                return self._identity(method, path, body)
            if headers.get("Authorization") != f"Bearer {self.token}":
                raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing or invalid.")
            lower = path.lower().rstrip("/")
            if lower.startswith("/operations/"):
                return self._poll(lower.rsplit("/", 1)[1], query)
            match = re.fullmatch(r"/subscriptions/([^/]+)(/.*)?", lower)
            if not match:
                raise ArmError(404, "NotFound", f"no route for {path}")
            if match.group(1) != self.subscription.lower():
                raise ArmError(404, "SubscriptionNotFound", f"The subscription '{match.group(1)}' could not be found.")
            self._check_api_version(method, lower, query.get("api-version", ""))
            document = json.loads(body) if body else {}
            vm_create = method == "PUT" and re.search(r"/providers/microsoft\.compute/virtualmachines/[^/]+$", lower)
            try:
                in_operation = self._fault(method, lower)
                status, extra, answer = self._route(method, path.rstrip("/"), lower, document)
            except ArmError as error:
                if vm_create and error.code not in ("NicReservedForAnotherVm", "NicInUse"):
                    self._reserve_nics(path, document)
                raise
            if in_operation is not None:
                extra = self._operation_headers(in_operation)
                if vm_create:
                    self._reserve_nics(path, document)
            return status, extra, answer

    def _check_api_version(self, method: str, lower: str, version: str) -> None:
        """ARM refuses an api-version its provider does not serve in this cloud (exact match, as ARM does)."""
        served = SERVED_VERSIONS[self.cloud]
        match = re.search(r"/providers/(microsoft\.[a-z]+)/([a-z]+)", lower)
        if served is None or match is None or match.group(1) not in served:
            return
        if version not in served[match.group(1)]:
            raise ArmError(400, "NoRegisteredProviderFound",
                           f"No registered resource provider found for location 'westus' and API version '{version}' "
                           f"for type '{match.group(2)}'. The supported api-versions are "
                           f"'{', '.join(served[match.group(1)])}'. The supported locations are "
                           f"'{', '.join(LOCATIONS)}'.")

    def _reserve_nics(self, vm_path: str, body: dict[str, Any]) -> None:
        """A failed VM create keeps its NICs reserved for that VM for a while, as Azure does."""
        references = ((body.get("properties") or {}).get("networkProfile") or {}).get("networkInterfaces") or []
        for reference in references:
            key = str(reference.get("id", "")).lower()
            if key in self.resources:
                self.reserved_nics[key] = (time.monotonic() + self.nic_reservation_seconds, vm_path.rstrip("/"))

    def _nic_reservation(self, nic_id: str, vm_id: str | None = None) -> None:
        """Refuse touching a NIC reserved for another VM (``vm_id``: the VM asking for it, if any)."""
        until, holder = self.reserved_nics.get(nic_id.lower(), (0.0, ""))
        if time.monotonic() < until and (vm_id is None or holder.lower() != vm_id.lower()):
            seconds = int(self.nic_reservation_seconds)
            raise ArmError(400, "NicReservedForAnotherVm",
                           f"Nic(s) in request is reserved for another Virtual Machine for {seconds} seconds. Please "
                           f"provide another nic(s) or retry after {seconds} seconds. Reserved VM: {holder}")

    def _fault(self, method: str, lower: str) -> Operation | None:
        for fault in self.faults:
            if not fault.fired and fault.method == method and re.search(fault.path, lower):
                fault.fired = True
                if not fault.in_operation:
                    raise ArmError(fault.status, fault.code, f"injected fault on {method} {lower}")
                return Operation(error=(fault.code, f"injected fault in the operation of {method} {lower}"))
        return None

    def _identity(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        """Entra ID as MSAL sees it: OpenID metadata for our tenant and a client-credentials token endpoint."""
        tenant_base = f"{self.url}/{self.tenant}"
        if path.endswith("/openid-configuration"):
            return 200, {}, {
                "token_endpoint": f"{tenant_base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{tenant_base}/oauth2/v2.0/authorize",
                "issuer": f"{tenant_base}/v2.0",
            }
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if (method != "POST" or not path.startswith(f"/{self.tenant}/") or form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret):
            return 401, {}, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret provided."}
        return 200, {}, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": self.token}

    def _operation_headers(self, operation: Operation, location: bool = False,
                           asynchronous: bool = True) -> dict[str, str]:
        """The headers of a 201/202: ``Azure-AsyncOperation`` and/or ``Location`` to poll, and ``Retry-After``."""
        operation_id = uuid.uuid4().hex
        self.operations[operation_id] = operation
        headers = {"Retry-After": str(self.retry_after)}
        if asynchronous:
            headers["Azure-AsyncOperation"] = f"{self.url}/operations/{operation_id}?api-version=2024-01-01"
        if location:
            headers["Location"] = f"{self.url}/operations/{operation_id}?api-version=2024-01-01&kind=location"
        return headers

    def _poll(self, operation_id: str, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """Azure-AsyncOperation polls answer 200 with a status; Location polls 202 until done, then 204 (or the error)."""
        operation = self.operations.get(operation_id)
        if operation is None:
            raise ArmError(404, "NotFound", "no such operation")
        operation.polls += 1
        by_location = query.get("kind") == "location"
        if operation.polls == 1:
            headers = {"Retry-After": str(self.retry_after)}
            if by_location:
                headers["Location"] = f"{self.url}/operations/{operation_id}?api-version=2024-01-01&kind=location"
                return 202, headers, None
            return 200, headers, {"status": "InProgress"}
        if operation.error:
            code, message = operation.error
            if by_location:
                raise ArmError(400, code, message)
            return 200, {}, {"status": "Failed", "error": {"code": code, "message": message}}
        return (204, {}, None) if by_location else (200, {}, {"status": "Succeeded"})

    # -- resources -------------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, lower: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        parts = lower.split("/")[3:]  # after /subscriptions/ID
        original = path.split("/")[3:]
        if parts[:1] == ["providers"]:
            return 200, {}, self._catalog(parts[1:])
        if parts[:1] != ["resourcegroups"] or len(parts) < 2:
            raise ArmError(404, "NotFound", f"no route for {path}")
        group_id = f"/subscriptions/{self.subscription}/resourceGroups/{original[1]}"
        if len(parts) == 2:
            return self._resource_group(method, group_id, body)
        if group_id.lower() not in self.resources:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{original[1]}' could not be found.")
        if parts[2:] == ["resources"]:
            return 200, {}, {"value": self._in_group(group_id)}
        if len(parts) < 6 or parts[2] != "providers":
            raise ArmError(404, "NotFound", f"no route for {path}")
        resource_id = "/".join([group_id] + original[2:])
        if parts[4] == "virtualmachines" and len(parts) == 7:
            return self._vm_action(method, resource_id.rsplit("/", 1)[0], parts[-1])
        if method == "PUT":
            return self._put(resource_id, body)
        if method == "PATCH" and parts[4] == "virtualmachines":
            return self._resize(self._existing(resource_id), body)
        if method == "GET":
            return 200, {}, self._view(self._existing(resource_id))
        if method == "DELETE":
            return self._delete(resource_id)
        raise ArmError(405, "MethodNotAllowed", f"{method} {path}")

    def _catalog(self, parts: list[str]) -> Any:
        """Read-only subscription-level data: provider locations, VM sizes, marketplace images."""
        if len(parts) == 1 and parts[0] in PROVIDER_TYPES:
            namespace, types = PROVIDER_TYPES[parts[0]]
            served = (SERVED_VERSIONS[self.cloud] or {}).get(parts[0])
            return {"namespace": namespace,
                    "registrationState": "NotRegistered" if parts[0] in self.unregistered else "Registered",
                    "resourceTypes": [{"resourceType": kind, "locations": list(LOCATIONS.values()),
                                       **({"apiVersions": sorted(served, reverse=True)} if served else {})}
                                      for kind in types]}
        if parts == ["microsoft.compute", "skus"]:
            return {"value": [self._sku(size, location) for location in LOCATIONS for size in SIZES]}
        if len(parts) < 4 or parts[:2] != ["microsoft.compute", "locations"]:
            raise ArmError(404, "NotFound", "no such provider path")
        location = parts[2]
        if location not in LOCATIONS:
            raise ArmError(404, "LocationNotAvailableForResourceType",
                           f"The provided location '{location}' is not available for resource type 'Microsoft.Compute'.")
        if parts[3:] == ["vmsizes"]:
            return {"value": [{"name": size, "numberOfCores": 2, "memoryInMB": 4096} for size in SIZES]}
        image = parts[3:]
        if len(image) >= 9 and image[0] == "publishers" and image[2:4] == ["artifacttypes", "vmimage"]:
            versions = IMAGES.get((image[1], image[5], image[7]))
            if versions is None:
                raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
            if len(image) == 9:
                return [{"name": version, "location": location, "id": f"/versions/{version}"} for version in versions]
            if image[9] in versions:
                return {"name": image[9], "location": location, "id": f"/versions/{image[9]}", "properties": {}}
            raise ArmError(404, "NotFound", "Artifact: VMImage was not found.")
        raise ArmError(404, "NotFound", "no such provider path")

    def _sku(self, size: str, location: str) -> dict[str, Any]:
        """One entry of the resource SKUs API, with this subscription's restrictions, as ARM lists them."""
        reason = self.restricted_sizes.get(location, {}).get(size)
        restrictions = [{"type": "Location", "values": [location], "restrictionInfo": {"locations": [location]},
                         "reasonCode": reason}] if reason else []
        return {"resourceType": "virtualMachines", "name": size, "tier": "Standard", "size": size.split("_", 1)[1],
                "locations": [location], "locationInfo": [{"location": location, "zones": []}],
                "capabilities": [{"name": "vCPUs", "value": "2"}], "restrictions": restrictions}

    def _resource_group(self, method: str, group_id: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        key = group_id.lower()
        existing = self.resources.get(key)
        if method in ("GET", "HEAD"):
            if existing is None:
                raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{group_id.rsplit('/', 1)[1]}' could not be found.")
            return (204 if method == "HEAD" else 200), {}, (None if method == "HEAD" else existing)
        if method == "PUT":
            self._check_location(body.get("location"))
            group = {"id": group_id, "name": group_id.rsplit("/", 1)[1], "type": "Microsoft.Resources/resourceGroups",
                     "location": body["location"], "tags": body.get("tags") or {},
                     "properties": {"provisioningState": "Succeeded"}}
            self.resources[key] = group
            return (200 if existing else 201), {}, group
        if method == "DELETE":
            if existing is None:
                return 204, {}, None
            for resource in self._in_group(group_id):
                if resource["type"] == "Microsoft.Compute/virtualMachines" and self.listener:
                    self.listener.vm_deleted(resource)
            for child in [other for other in self.resources if other.startswith(key + "/")]:
                del self.resources[child]
            del self.resources[key]
            return 202, self._operation_headers(Operation(), location=True, asynchronous=False), None
        raise ArmError(405, "MethodNotAllowed", method)

    def _in_group(self, group_id: str) -> list[dict[str, Any]]:
        """Top-level resources of a group (subnets are children of their vnet and not listed, as in ARM)."""
        prefix = group_id.lower() + "/providers/"
        return [resource for key, resource in self.resources.items()
                if key.startswith(prefix) and key[len(prefix):].count("/") == 2]

    def _existing(self, resource_id: str) -> dict[str, Any]:
        resource = self.resources.get(resource_id.lower())
        if resource is None:
            kind = resource_id.split("/")[-2]
            raise ArmError(404, "ResourceNotFound", f"The Resource '{kind}/{resource_id.rsplit('/', 1)[1]}' was not found.")
        return resource

    def _reference(self, value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
        if not value:
            return None
        resource = self.resources.get(str(value.get("id", "")).lower())
        if resource is None:
            raise ArmError(400, "InvalidResourceReference", f"Resource {value.get('id')} referenced by {what} was not found.")
        return resource

    def _check_location(self, location: str | None) -> None:
        if (location or "").lower() not in LOCATIONS:
            raise ArmError(400, "LocationNotAvailableForResourceGroup", f"The provided location '{location}' is not available.")

    def _put(self, resource_id: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        key = resource_id.lower()
        existing = key in self.resources
        type_parts = resource_id.split("/")[6:]
        resource_type = "/".join([type_parts[0]] + type_parts[1::2])
        resource = {**body, "id": resource_id, "name": resource_id.rsplit("/", 1)[1], "type": resource_type}
        resource["properties"] = {**(body.get("properties") or {}), "provisioningState": "Succeeded"}
        if resource_type.count("/") == 1:
            self._check_location(body.get("location"))
        namespace = resource_type.split("/")[0].lower()
        if namespace in self.unregistered:
            raise ArmError(409, "MissingSubscriptionRegistration",
                           f"The subscription is not registered to use namespace '{resource_type.split('/')[0]}'. See "
                           "https://aka.ms/rps-not-found for how to register subscriptions.")
        kind = resource_type.split("/")[-1].lower()
        check = getattr(self, f"_put_{kind}", None)
        if check is None and kind not in ("networksecuritygroups",):
            raise ArmError(400, "NoRegisteredProviderFound", f"fake ARM does not serve {resource_type}")
        if check is not None:
            check(resource)
        self.resources[key] = resource
        if kind == "virtualmachines" and self.listener:
            nic = self.resources[resource["properties"]["networkProfile"]["networkInterfaces"][0]["id"].lower()]
            self.listener.vm_created(resource, nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"])
        return (200 if existing else 201), self._operation_headers(Operation()), self._view(resource)

    def _put_virtualnetworks(self, vnet: dict[str, Any]) -> None:
        for subnet in vnet["properties"].pop("subnets", None) or []:
            child = {**subnet, "id": f"{vnet['id']}/subnets/{subnet['name']}",
                     "type": f"{vnet['type']}/subnets"}
            child["properties"] = {**(subnet.get("properties") or {}), "provisioningState": "Succeeded"}
            self._put_subnets(child)
            self.resources[child["id"].lower()] = child

    def _put_subnets(self, subnet: dict[str, Any]) -> None:
        prefix = subnet["properties"].get("addressPrefix")
        try:
            ipaddress.ip_network(prefix)
        except (TypeError, ValueError):
            raise ArmError(400, "InvalidAddressPrefix", f"Subnet {subnet['name']} has an invalid address prefix {prefix!r}.") from None
        self._reference(subnet["properties"].get("networkSecurityGroup"), "subnet")

    def _put_publicipaddresses(self, address: dict[str, Any]) -> None:
        used = {resource["properties"].get("ipAddress") for resource in self.resources.values()}
        address["properties"]["ipAddress"] = next(str(ip) for ip in PUBLIC_RANGE.hosts() if str(ip) not in used)

    def _put_networkinterfaces(self, nic: dict[str, Any]) -> None:
        self._reference(nic["properties"].get("networkSecurityGroup"), "network interface")
        configuration = nic["properties"]["ipConfigurations"][0]["properties"]
        subnet = self._reference(configuration.get("subnet"), "network interface")
        if subnet is None:
            raise ArmError(400, "InvalidRequestFormat", "An IP configuration needs a subnet.")
        self._reference(configuration.get("publicIPAddress"), "network interface")
        vnet = self.resources.get(subnet["id"].lower().rsplit("/subnets/", 1)[0]) or {}
        if vnet.get("location", "").lower() != str(nic.get("location", "")).lower():
            raise ArmError(400, "InvalidResourceReference",
                           f"Resource {subnet['id']} referenced by resource {nic['id']} was not found. Please make sure "
                           f"that the referenced resource exists, and that both resources are in the same region.")
        network = ipaddress.ip_network(subnet["properties"]["addressPrefix"])
        taken = {self._private_ip(other) for other in self._nics() if other["id"].lower() != nic["id"].lower()}
        wanted = configuration.get("privateIPAddress")
        if wanted:
            if ipaddress.ip_address(wanted) not in network:
                raise ArmError(400, "PrivateIPAddressNotInSubnet",
                               f"Private static IP address {wanted} does not belong to the range of subnet prefix {network}.")
            if wanted in taken:
                raise ArmError(400, "PrivateIPAddressInUse", f"IP configuration is using the private IP address {wanted} which is already allocated.")
            configuration["privateIPAllocationMethod"] = "Static"
        else:
            configuration["privateIPAddress"] = next(str(ip) for ip in list(network.hosts())[3:] if str(ip) not in taken)
            configuration["privateIPAllocationMethod"] = "Dynamic"

    def _put_virtualmachines(self, vm: dict[str, Any]) -> None:
        properties = vm["properties"]
        if not VM_NAME.fullmatch(vm["name"]):
            raise ArmError(400, "InvalidResourceName",
                           f"Resource name {vm['name']} is invalid. The name can be up to 64 characters long. It can "
                           "contain only alphanumeric characters, dashes, underscores and periods. The name must begin "
                           "with a letter or number and it must end with a letter, number or underscore.")
        self._check_size(properties.get("hardwareProfile", {}).get("vmSize"), str(vm.get("location")))
        self._check_os_profile(properties.get("osProfile") or {})
        reference = properties["storageProfile"]["imageReference"]
        versions = IMAGES.get((reference["publisher"].lower(), reference["offer"].lower(), reference["sku"].lower()))
        if not versions or reference["version"] not in versions + ["latest"]:
            raise ArmError(404, "PlatformImageNotFound", f"The platform image '{reference}' is not available.")
        profile = properties["osProfile"]
        if profile.get("adminUsername") in ("root", "admin", "administrator"):
            raise ArmError(400, "InvalidParameter", "The Admin Username specified is not allowed.")
        base64.b64decode(profile.get("customData") or "", validate=True)
        for reference in properties["networkProfile"]["networkInterfaces"]:
            self._nic_reservation(reference.get("id", ""), vm["id"])
            nic = self._reference(reference, "virtual machine")
            holder = (nic or {}).get("properties", {}).get("virtualMachine")
            if holder and holder["id"].lower() != vm["id"].lower():
                raise ArmError(400, "NicInUse", f"Network interface {nic['id']} is used by {holder['id']}.")
            nic["properties"]["virtualMachine"] = {"id": vm["id"]}
        disk = properties["storageProfile"].setdefault("osDisk", {})
        disk_name = disk.get("name") or f"{vm['name']}_OsDisk_1_{uuid.uuid4().hex}"
        group_id = vm["id"].split("/providers/")[0]
        disk_id = f"{group_id}/providers/Microsoft.Compute/disks/{disk_name}"
        disk.update(name=disk_name, managedDisk={**(disk.get("managedDisk") or {}), "id": disk_id})
        self.resources[disk_id.lower()] = {"id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks",
                                           "location": vm["location"], "properties": {"diskSizeGB": disk.get("diskSizeGB", 30)}}
        properties["vmId"] = str(uuid.uuid4())
        vm["powerState"] = "running"

    def _check_size(self, size: Any, location: str) -> None:
        """A size that does not exist, or that this subscription may not use in the location, as ARM refuses them."""
        if size not in SIZES:
            raise ArmError(400, "InvalidParameter", f"The requested VM size {size} is not available.")
        if size in self.restricted_sizes.get(location.lower(), {}):
            raise ArmError(409, "SkuNotAvailable",
                           f"The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: "
                           f"{size}' is currently not available in location '{location}'. Please try another "
                           "size or deploy to a different location or different zone.")

    def _resize(self, vm: dict[str, Any], body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        """PATCH of a VM: only the size is served. As Azure documents (aka.ms/azure-resizevm), an allocated VM can
        take only the sizes of its current hardware cluster (and restarts); a deallocated one any allowed size."""
        unknown = set(body.get("properties") or {}) - {"hardwareProfile"} | set(body) - {"properties", "tags"}
        if unknown:
            raise ArmError(400, "InvalidParameter", f"fake ARM only updates a VM's size, not {sorted(unknown)}")
        size = ((body.get("properties") or {}).get("hardwareProfile") or {}).get("vmSize")
        self._check_size(size, str(vm["location"]))
        if vm["powerState"] != "deallocated" and size not in self.cluster_sizes:
            raise ArmError(409, "OperationNotAllowed",
                           f"Unable to resize the VM since the requested size '{size}' is not available in the current "
                           f"hardware cluster. The available sizes in this cluster are: {', '.join(self.cluster_sizes)}. "
                           "Read more on VM resizing strategy at https://aka.ms/azure-resizevm.")
        vm["properties"]["hardwareProfile"]["vmSize"] = size
        if vm["powerState"] == "running" and self.listener:  # Azure restarts a running VM to resize it
            self.listener.vm_power(vm, False)
            self.listener.vm_power(vm, True)
        return 200, self._operation_headers(Operation()), self._view(vm)

    @staticmethod
    def _check_os_profile(profile: dict[str, Any]) -> None:
        """Azure's rules on the Linux computer name, SSH public keys and custom data."""
        computer = str(profile.get("computerName") or "")
        if len(computer) > 64 or computer.isdigit() or set(computer) & LINUX_COMPUTER_NAME_FORBIDDEN:
            raise ArmError(400, "InvalidParameter", "Linux computer name cannot be more than 64 characters long, be "
                           "entirely numeric, or contain the following characters: ~ ! @ # $ % ^ & * ( ) = + _ [ ] { } "
                           "\\ | ; : . ' \" , < > / ?.")
        for key in ((profile.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys") or []:
            data = str(key.get("keyData", "")).split()
            valid = len(data) >= 2 and data[0] == "ssh-rsa"
            if valid:
                try:
                    blob = base64.b64decode(data[1])
                    valid = len(blob) > 270  # a 2048-bit RSA key's blob; shorter ones are refused
                except ValueError:
                    valid = False
            if not valid:
                raise ArmError(400, "InvalidParameter",
                               "The value of parameter linuxConfiguration.ssh.publicKeys.keyData is invalid.")
        custom = profile.get("customData") or ""
        if len(custom) > CUSTOM_DATA_LIMIT:
            raise ArmError(400, "InvalidParameter", "Custom data in OSProfile must be in Base64 encoding and with a "
                                                    f"maximum length of {CUSTOM_DATA_LIMIT} characters.")

    def _nics(self) -> list[dict[str, Any]]:
        return [resource for resource in self.resources.values() if resource["type"] == "Microsoft.Network/networkInterfaces"]

    @staticmethod
    def _private_ip(nic: dict[str, Any]) -> str:
        return nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]

    def _users(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """NICs that use a subnet, NSG or public IP (ARM's back references)."""
        target = resource["id"].lower()
        users = []
        for nic in self._nics():
            configuration = nic["properties"]["ipConfigurations"][0]["properties"]
            references = [configuration.get("subnet"), configuration.get("publicIPAddress"),
                          nic["properties"].get("networkSecurityGroup")]
            if any(reference and reference["id"].lower() == target for reference in references):
                users.append(nic)
        return users

    def _view(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource as GET shows it, with back references computed (subnets of a vnet, users of a subnet)."""
        view = json.loads(json.dumps({key: value for key, value in resource.items() if key != "powerState"}))
        kind = resource["type"].lower()
        users = [{"id": nic["properties"]["ipConfigurations"][0].get("id") or nic["id"] + "/ipConfigurations/ipconfig1"}
                 for nic in self._users(resource)]
        if kind.endswith("/subnets"):
            view["properties"]["ipConfigurations"] = users
        elif kind.endswith("/virtualnetworks"):
            prefix = resource["id"].lower() + "/subnets/"
            view["properties"]["subnets"] = [self._view(other) for key, other in self.resources.items() if key.startswith(prefix)]
        elif kind.endswith("/publicipaddresses") and users:
            view["properties"]["ipConfiguration"] = users[0]
        elif kind.endswith("/networksecuritygroups"):
            view["properties"]["networkInterfaces"] = [{"id": nic["id"]} for nic in self._users(resource)]
        return view

    def _delete(self, resource_id: str) -> tuple[int, dict[str, str], Any]:
        key = resource_id.lower()
        resource = self.resources.get(key)
        if resource is None:
            return 204, {}, None
        kind = resource["type"].lower()
        if kind.endswith("/networkinterfaces"):
            self._nic_reservation(resource_id)
        if kind.endswith("/networkinterfaces") and resource["properties"].get("virtualMachine"):
            raise ArmError(400, "NicInUse", f"Network Interface {resource_id} is used by existing resource "
                                            f"{resource['properties']['virtualMachine']['id']}.")
        if kind.endswith("/virtualnetworks"):
            for subnet in [other for other_key, other in self.resources.items() if other_key.startswith(key + "/subnets/")]:
                if self._users(subnet):
                    raise ArmError(400, "InUseSubnetCannotBeDeleted", f"Subnet {subnet['name']} is in use.")
        elif self._users(resource):
            codes = {"/subnets": "InUseSubnetCannotBeDeleted", "/publicipaddresses": "PublicIPAddressCannotBeDeleted",
                     "/networksecuritygroups": "InUseNetworkSecurityGroupCannotBeDeleted"}
            code = next(code for suffix, code in codes.items() if kind.endswith(suffix))
            raise ArmError(400, code, f"{resource_id} is in use by {self._users(resource)[0]['id']}.")
        if kind.endswith("/virtualmachines"):
            self._delete_vm(resource)
        for child in [other for other in self.resources if other.startswith(key + "/")]:
            del self.resources[child]
        del self.resources[key]
        return 202, self._operation_headers(Operation(), location=True), None

    def _delete_vm(self, vm: dict[str, Any]) -> None:
        """Detach the NICs; delete the OS disk and NICs whose ``deleteOption`` says so (ARM's defaults keep them),
        except a NIC a failed create keeps reserved: it stays, and its own delete is refused until the time is up."""
        if self.listener:
            self.listener.vm_deleted(vm)
        disk = vm["properties"]["storageProfile"]["osDisk"]
        if disk.get("deleteOption") == "Delete":
            self.resources.pop(disk["managedDisk"]["id"].lower(), None)
        for reference in vm["properties"]["networkProfile"]["networkInterfaces"]:
            nic = self.resources.get(reference["id"].lower())
            if nic is not None:
                nic["properties"].pop("virtualMachine", None)
                reserved = time.monotonic() < self.reserved_nics.get(reference["id"].lower(), (0.0, ""))[0]
                if (reference.get("properties") or {}).get("deleteOption") == "Delete" and not reserved:
                    del self.resources[reference["id"].lower()]

    def _vm_action(self, method: str, vm_id: str, action: str) -> tuple[int, dict[str, str], Any]:
        vm = self._existing(vm_id)
        if action == "instanceview" and method == "GET":
            state = vm["powerState"]
            return 200, {}, {"statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
                {"code": f"PowerState/{state}", "level": "Info", "displayStatus": f"VM {state}"},
            ]}
        transitions = {"poweroff": "stopped", "deallocate": "deallocated", "start": "running", "restart": "running"}
        if method != "POST" or action not in transitions:
            raise ArmError(404, "NotFound", f"no action {action}")
        if action == "restart" and vm["powerState"] != "running":
            raise ArmError(409, "OperationNotAllowed", "Cannot restart the VM as it is not running.")
        vm["powerState"] = transitions[action]
        if self.listener:
            if action == "restart":
                self.listener.vm_power(vm, False)
            self.listener.vm_power(vm, vm["powerState"] == "running")
        return 202, self._operation_headers(Operation(), location=True), None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle and delayed ACKs add 40 ms to each call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        arm: FakeArm = self.server.arm  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, answer = arm.handle(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)),
                                                 self.headers, body)
        except ArmError as error:
            arm.refused.append(error.code)
            status, headers, answer = error.status, {}, {"error": {"code": error.code, "message": error.message}}
        except Exception as error:  # noqa: BLE001 - a bug in the fake must show up as a server error, not a hang
            status, headers, answer = 500, {}, {"error": {"code": "FakeArmBug", "message": f"{type(error).__name__}: {error}"}}
        data = b"" if answer is None or self.command == "HEAD" else json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "x-ms-request-id": str(uuid.uuid4())}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the tests look at ``FakeArm.requests`` instead."""
