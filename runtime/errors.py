"""Errors the engine raises; the API layer maps each class to Docker's status code and keeps the message.

Messages use moby's wording (``No such container: x``, ``No such image: alpine:latest``) because clients match on
it: docker-py turns a 404 whose message contains "no such image" into ``ImageNotFound``.
"""


class EngineError(Exception):
    """Root of the runtime's deliberate errors. ``status`` is the HTTP status the API answers with."""

    status = 500


class InvalidParameter(EngineError):
    status = 400


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    """Name already in use, container running when it must not be, image in use."""

    status = 409


class NotModified(EngineError):
    """Start of a started container, stop of a stopped one: 304 with no body."""

    status = 304


class Forbidden(EngineError):
    status = 403


class Unavailable(EngineError):
    """Swarm and other features we do not serve."""

    status = 503


class NotSupported(EngineError):
    status = 501


class HostError(EngineError):
    """The host refused something (mount, cgroup write, missing tool); the message says what and why."""

    status = 500
