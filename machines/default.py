"""The one place the default collaborators are chosen: machines provisioned with our bundled runtime.

The core (``machines.machine``) is given a ``Provisioner`` and never imports bootstrap; this module, the top of the
dependency graph next to the CLI, gives it ``bootstrap.provisioner.RuntimeProvisioner``. ``machines.Machines`` is
this module's ``Machines``.
"""

from __future__ import annotations

import os

from machines import machine


class Machines(machine.Machines):
    """``machines.machine.Machines`` whose provisioner is our runtime's unless another is given."""

    def __init__(
        self, storage_path: str | os.PathLike[str] | None = None, provisioner: machine.Provisioner | None = None
    ) -> None:
        if provisioner is None:  # imported here: bootstrap pulls in paramiko and cryptography, which `version` never needs
            from bootstrap.provisioner import RuntimeProvisioner

            provisioner = RuntimeProvisioner()
        super().__init__(storage_path, provisioner)
