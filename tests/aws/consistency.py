"""EC2's eventual consistency, played in front of moto: a loopback HTTP proxy the AWS driver talks to.

moto agrees with itself at once; EC2 does not. Right after ``RunInstances``, ``CreateSecurityGroup`` or
``ImportKeyPair`` EC2 may answer ``InvalidInstanceID.NotFound``, ``InvalidGroup.NotFound`` or
``InvalidKeyPair.NotFound`` to calls that name the new resource, and its Describe lists may not show it yet
(https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html). ``ConsistencyProxy`` remembers every id
moto hands out and, for ``delay`` seconds after, makes EC2's answers lag the same way:

* a call naming a fresh id (a parameter other than a Describe filter) gets that resource type's NotFound error;
  ``DeleteKeyPair`` of a fresh key pair answers success and deletes nothing, as EC2 does for a key it does not see;
* Describe lists (filtered or not) leave fresh resources out;
* a deleted key pair or security group is still described (by name or id, and in filtered lists) for ``delay``
  seconds, so a driver that does not wait for its deletion to show sees it linger;
* a terminated instance shows ``shutting-down`` for ``delay`` seconds, and its security groups refuse deletion with
  ``DependencyViolation`` for three times ``delay`` more (its network interface is still being detached);
* an instance profile named in ``late_profiles`` is refused by ``RunInstances`` for that many seconds from its first
  use, as while IAM's new profile propagates to EC2.

The proxy speaks EC2's query protocol (form-encoded requests, XML answers) and nothing else.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from typing import Any

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"  # of the answers the proxy makes; moto's may differ

# What a create call returns (element name in its answer) and the NotFound code EC2 gives for that kind of id.
CREATED = {"RunInstances": "instanceId", "CreateSecurityGroup": "groupId", "ImportKeyPair": "keyName",
           "CreateKeyPair": "keyName"}
# Deletions EC2 shows late: delete action -> (its Describe, the list element, the id element, the id parameter).
LINGERING = {"DeleteSecurityGroup": ("DescribeSecurityGroups", "securityGroupInfo", "groupId", "GroupId"),
             "DeleteKeyPair": ("DescribeKeyPairs", "keySet", "keyName", "KeyName")}
# Describe filters a lingering item is matched against (others: the item is left out, as if already gone).
FILTER_FIELDS = {"group-name": "groupName", "group-id": "groupId", "vpc-id": "vpcId", "key-name": "keyName"}
NOT_FOUND = {"instanceId": ("InvalidInstanceID.NotFound", "The instance ID '{}' does not exist"),
             "groupId": ("InvalidGroup.NotFound", "The security group '{}' does not exist"),
             "keyName": ("InvalidKeyPair.NotFound", "The key pair '{}' does not exist")}


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((child for child in element if _tag(child) == name), None)


def _text(element: ET.Element, name: str) -> str | None:
    child = _child(element, name)
    return child.text if child is not None else None


def _matches(item: ET.Element, name: str, values: set[str]) -> bool:
    """Whether an item (namespaces dropped) passes one Describe filter; unknown filters never pass."""
    if name.startswith("tag:"):
        tags = {_text(tag, "key"): _text(tag, "value") for tag in _all(item, "item") if _child(tag, "key") is not None}
        return tags.get(name[4:]) in values
    field = FILTER_FIELDS.get(name)
    element = _child(item, field) if field else None
    return element is not None and element.text in values


def _all(root: ET.Element, name: str) -> list[ET.Element]:
    """Every element named ``name`` (whatever namespace the answer uses)."""
    return [element for element in root.iter() if _tag(element) == name]


class ConsistencyProxy:
    """A ThreadingHTTPServer on 127.0.0.1 forwarding to ``upstream`` (moto) with EC2's lag ``delay`` seconds long."""

    def __init__(self, upstream: str, delay: float = 2.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.fresh: dict[str, tuple[str, float]] = {}  # id or key name -> (its kind, when it was made)
        self.terminated: dict[str, tuple[float, list[str]]] = {}  # instance id -> (when, its group ids)
        self.deleted: dict[str, tuple[str, float, ET.Element]] = {}  # id -> (its Describe, when, its last item)
        self.late_profiles: dict[str, float] = {}  # instance profile -> seconds EC2 refuses it from its first use
        self._profile_deadlines: dict[str, float] = {}
        self.refused: list[tuple[str, str]] = []  # (action, error code) of each answer the lag changed: tests look
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="ec2 consistency", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def reset(self, delay: float | None = None) -> None:
        with self.lock:
            self.fresh.clear()
            self.terminated.clear()
            self.deleted.clear()
            self.late_profiles.clear()
            self._profile_deadlines.clear()
            self.refused.clear()
            if delay is not None:
                self.delay = delay

    # -- the lag ---------------------------------------------------------------------------------------------
    def _is_fresh(self, name: str, kind: str | None = None) -> bool:
        entry = self.fresh.get(name)
        return entry is not None and (kind is None or entry[0] == kind) and time.monotonic() - entry[1] < self.delay

    def _shutting_down(self, instance_id: str, stages: int = 1) -> bool:
        """Whether a terminated instance still shows shutting-down (``stages`` > 1: still holds its network
        interface, which EC2 detaches a while after it shows terminated)."""
        entry = self.terminated.get(instance_id)
        return entry is not None and time.monotonic() - entry[0] < self.delay * stages

    def handle(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        params = dict(urllib.parse.parse_qsl(body.decode()))
        action = params.get("Action", "")
        with self.lock:
            refused = self._refusal(action, params)
            if refused is not None:
                return refused
            if action == "DeleteKeyPair" and self._is_fresh(params.get("KeyName", ""), "keyName"):
                self.refused.append((action, "silently ignored"))
                return 200, self._answer(action, "<return>true</return>")
            if action == "TerminateInstances":
                self._remember_terminations(params, headers)
            lingering = self._ghost_answer(action, params)
            if lingering is not None:
                return 200, lingering
            last_view = self._item_before_delete(action, params, headers)
        status, answer = self._forward(body, headers)
        with self.lock:
            if status == 200 and action in CREATED:
                self._remember_created(CREATED[action], answer)
            if status == 200 and last_view is not None:
                self.deleted[last_view[0]] = (LINGERING[action][0], time.monotonic(), last_view[1])
            if status == 200 and action.startswith("Describe"):
                answer = self._add_ghosts(action, params, self._lag_list(action, answer))
        return status, answer

    # -- deletions shown late --------------------------------------------------------------------------------
    def _ghosts(self, describe: str) -> dict[str, ET.Element]:
        now = time.monotonic()
        return {key: item for key, (action, when, item) in self.deleted.items()
                if action == describe and now - when < self.delay}

    def _item_before_delete(self, action: str, params: dict[str, str],
                            headers: dict[str, str]) -> tuple[str, ET.Element] | None:
        """The item a delete is about to remove, as moto describes it now (namespaces dropped), with its id."""
        if action not in LINGERING:
            return None
        describe, set_name, _, id_param = LINGERING[action]
        identifier = params.get(id_param, "")
        form = {"Action": describe, "Version": "2016-11-15", f"{id_param}.1": identifier}
        status, answer = self._forward(urllib.parse.urlencode(form).encode(), headers)
        items = [item for parent in _all(ET.fromstring(answer), set_name) for item in parent] if status == 200 else []
        if not items:
            return None
        for element in items[0].iter():
            element.tag = _tag(element)
        return identifier, items[0]

    def _ghost_answer(self, action: str, params: dict[str, str]) -> bytes | None:
        """A Describe by id of only deleted-moments-ago resources: EC2 still shows them."""
        lingering = next((entry for entry in LINGERING.values() if entry[0] == action), None)
        if lingering is None:
            return None
        _, set_name, _, id_param = lingering
        named = [value for name, value in params.items() if name.startswith(f"{id_param}.")]
        ghosts = self._ghosts(action)
        if not named or any(value not in ghosts for value in named):
            return None
        self.refused.append((action, "still shown after delete"))
        items = "".join(ET.tostring(ghosts[value], encoding="unicode") for value in named)
        return self._answer(action, f"<{set_name}>{items}</{set_name}>")

    def _add_ghosts(self, action: str, params: dict[str, str], answer: bytes) -> bytes:
        """Deleted-moments-ago resources a filtered (or full) Describe list still shows."""
        lingering = next((entry for entry in LINGERING.values() if entry[0] == action), None)
        ghosts = self._ghosts(action) if lingering is not None else {}
        if lingering is None or not ghosts or any(name.startswith(f"{lingering[3]}.") for name in params):
            return answer
        filters: dict[str, set[str]] = {}
        for name, value in params.items():
            parts = name.split(".")
            if parts[0] == "Filter" and len(parts) == 4 and parts[2] == "Value":
                filters.setdefault(params.get(f"Filter.{parts[1]}.Name", ""), set()).add(value)
        matching = [item for item in ghosts.values() if all(_matches(item, key, values) for key, values in filters.items())]
        root = ET.fromstring(answer)
        containers = _all(root, lingering[1])
        if not matching or not containers:
            return answer
        self.refused.append((action, "still listed after delete"))
        namespace = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
        for item in matching:
            copy = ET.fromstring(ET.tostring(item))
            for element in copy.iter():
                element.tag = f"{{{namespace}}}{element.tag}" if namespace else element.tag
            containers[0].append(copy)
        ET.register_namespace("", namespace)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def _refusal(self, action: str, params: dict[str, str]) -> tuple[int, bytes] | None:
        """EC2's answer to a call that names a resource it does not see yet, or None to forward the call."""
        profile = params.get("IamInstanceProfile.Name") or params.get("IamInstanceProfile.Arn", "").rsplit("/", 1)[-1]
        if action == "RunInstances" and profile in self.late_profiles:
            self._profile_deadlines.setdefault(profile, time.monotonic() + self.late_profiles[profile])
        if action == "RunInstances" and profile and time.monotonic() < self._profile_deadlines.get(profile, 0):
            self.refused.append((action, "InvalidParameterValue"))
            return 400, self._error("InvalidParameterValue", f"Value ({profile}) for parameter iamInstanceProfile.name "
                                                             "is invalid. Invalid IAM Instance Profile name")
        for name, value in params.items():
            if name.startswith("Filter."):
                continue  # filters narrow a list (which lags); they do not name a resource
            key_param = name == "KeyName" or name.startswith("KeyName.")
            for kind in ("instanceId", "groupId") + (("keyName",) if key_param else ()):
                if self._is_fresh(value, kind) and not (action == "DeleteKeyPair" and kind == "keyName"):
                    code, message = NOT_FOUND[kind]
                    self.refused.append((action, code))
                    return 400, self._error(code, message.format(value))
        if action == "DeleteSecurityGroup":
            group = params.get("GroupId", "")
            holders = [instance for instance, (_, groups) in self.terminated.items()
                       if group in groups and self._shutting_down(instance, stages=4)]
            if holders:
                self.refused.append((action, "DependencyViolation"))
                return 400, self._error("DependencyViolation", f"resource {group} has a dependent object")
        return None

    def _remember_created(self, element_name: str, answer: bytes) -> None:
        now = time.monotonic()
        for element in _all(ET.fromstring(answer), element_name):
            if element.text:
                self.fresh[element.text] = (element_name, now)

    def _remember_terminations(self, params: dict[str, str], headers: dict[str, str]) -> None:
        """Note each instance's groups before it goes: they stay held while it shuts down."""
        ids = [value for name, value in params.items() if name.startswith("InstanceId.") and not self._is_fresh(value)]
        if not ids:
            return
        form = {"Action": "DescribeInstances", "Version": "2016-11-15",
                **{f"InstanceId.{index}": value for index, value in enumerate(ids, 1)}}
        status, answer = self._forward(urllib.parse.urlencode(form).encode(), headers)  # moto reads the region there
        if status != 200:
            return
        now = time.monotonic()
        for instance in _all(ET.fromstring(answer), "instancesSet"):
            for item in instance:
                instance_id = _child(item, "instanceId")
                groups = [element.text or "" for element in _all(item, "groupId")]
                state = _child(item, "instanceState")
                name = _child(state, "name") if state is not None else None
                if instance_id is not None and (name is None or name.text != "terminated"):
                    self.terminated[instance_id.text or ""] = (now, groups)

    def _lag_list(self, action: str, answer: bytes) -> bytes:
        """Leave fresh resources out of a Describe list; show instances being terminated as shutting-down."""
        root = ET.fromstring(answer)
        changed = False
        containers: dict[str, tuple[str, str]] = {"DescribeInstances": ("reservationSet", "instanceId"),
                                                  "DescribeSecurityGroups": ("securityGroupInfo", "groupId"),
                                                  "DescribeKeyPairs": ("keySet", "keyName")}
        if action not in containers:
            return answer
        set_name, id_name = containers[action]
        for parent in list(root.iter()):
            for item in list(parent):
                if _tag(item) != "item" or _tag(parent) not in (set_name, "instancesSet"):
                    continue
                identifier = _child(item, id_name)
                if identifier is not None and self._is_fresh(identifier.text or "", id_name):
                    parent.remove(item)
                    changed = True
                elif identifier is not None and action == "DescribeInstances" and self._shutting_down(identifier.text or ""):
                    state = _child(item, "instanceState")
                    if state is not None and _child(state, "name") is not None:
                        _child(state, "code").text = "32"  # type: ignore[union-attr]
                        _child(state, "name").text = "shutting-down"  # type: ignore[union-attr]
                        changed = True
        if action == "DescribeInstances":  # a reservation whose instances all lag is not listed either
            for reservations in _all(root, "reservationSet"):
                for reservation in list(reservations):
                    instances = _child(reservation, "instancesSet")
                    if instances is not None and len(instances) == 0:
                        reservations.remove(reservation)
                        changed = True
        if not changed:
            return answer
        ET.register_namespace("", root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else "")
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    # -- plumbing --------------------------------------------------------------------------------------------
    def _forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(self.upstream + "/", data=body, method="POST", headers={
            **{name: value for name, value in headers.items() if name.lower() in ("authorization", "x-amz-date",
                                                                                     "content-type", "x-amz-security-token")},
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    @staticmethod
    def _error(code: str, message: str) -> bytes:
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>").encode()

    @staticmethod
    def _answer(action: str, inner: str) -> bytes:
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">'
                f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the base class's naming
        proxy: ConsistencyProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, answer = proxy.handle(body, dict(self.headers.items()))
        except Exception as error:  # noqa: BLE001 - a bug in the proxy must show up as a server error, not a hang
            status, answer = 500, ConsistencyProxy._error("InternalError", f"{type(error).__name__}: {error}")
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: tests look at ``ConsistencyProxy.refused``."""

