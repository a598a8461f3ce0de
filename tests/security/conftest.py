"""The attack tests drive the daemon of tests/api (one per worker, real docker CLI and docker-py)."""

from tests.api.conftest import daemon, image, name  # noqa: F401  (fixtures shared with tests/api)
