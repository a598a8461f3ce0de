"""Tests of the Azure driver.

pytest imports this folder as the top-level package ``azure`` (``tests/`` is not a package), which would hide the
Azure SDK's own ``azure`` namespace; extending ``__path__`` keeps ``azure.core``, ``azure.mgmt`` and
``azure.identity`` importable next to these tests.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)
