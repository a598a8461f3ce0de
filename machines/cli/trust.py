"""``machines trust keygen | sign | verify``: cosign-compatible image signatures (see machines.trust)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from machines.cli.common import echo
from machines.errors import TrustError

PassphraseFile = Annotated[
    Path | None,
    typer.Option("--passphrase-file", help="Read the key's passphrase from the first line of this file "
                 "(else $COSIGN_PASSWORD, else a prompt)."),
]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Sign images in registries and verify their signatures (cosign's format).",
                        no_args_is_help=True)
    app.add_typer(group, name="trust")

    @group.command()
    def keygen(
        prefix: Annotated[str, typer.Argument(help="Write PREFIX.key (encrypted, 0600) and PREFIX.pub.")],
        passphrase_file: PassphraseFile = None,
    ) -> None:
        """Make an ECDSA P-256 key pair in the encrypted sigstore format cosign and skopeo read."""
        from machines.trust import keys

        private, public = keys.generate(prefix, keys.read_passphrase(passphrase_file, confirm=True))
        echo(f"Private key written to {private}")
        echo(f"Public key written to {public}")

    @group.command()
    def sign(
        image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY[:TAG|@DIGEST] to sign.")],
        key: Annotated[Path, typer.Option("--key", help="The encrypted private key (PREFIX.key).")],
        passphrase_file: PassphraseFile = None,
    ) -> None:
        """Sign the manifest IMAGE names; the signature goes to the same repository as tag sha256-<hex>.sig."""
        from machines.trust import keys, sigstore

        private = keys.decrypt_private_key(_read(key), keys.read_passphrase(passphrase_file, confirm=False))
        digest, tag = sigstore.sign(image, private)
        echo(f"Signed {digest}; signature stored as tag {tag}")

    @group.command()
    def verify(
        image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY[:TAG|@DIGEST] to verify.")],
        key: Annotated[Path, typer.Option("--key", help="The public key (PREFIX.pub).")],
    ) -> None:
        """Exit 0 when a signature by KEY names IMAGE's manifest digest and repository; else 1 and the reason."""
        from machines.trust import sigstore

        echo(f"Verified OK: {sigstore.verify(image, _read(key))}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read key {path}: {exc.strerror}") from None
