from tests.support.fixtures import test_bridge, test_host, test_key  # noqa: F401
