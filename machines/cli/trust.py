"""``machines trust keygen | sign | verify``: cosign-compatible image signatures (see machines.trust)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from machines.cli.common import echo
from machines.errors import TrustError, UsageError

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
        key: Annotated[Path | None, typer.Option("--key", help="The encrypted private key (PREFIX.key).")] = None,
        sign_by: Annotated[str | None, typer.Option(
            "--sign-by", metavar="FINGERPRINT", help="Sign with this GPG key instead (simple signing, as skopeo).")
        ] = None,
        lookaside: Annotated[str | None, typer.Option(
            "--lookaside", metavar="DIR", help="With --sign-by: the lookaside folder the signature goes to when the "
            "registry has no signature extension.")] = None,
        passphrase_file: PassphraseFile = None,
    ) -> None:
        """Sign the manifest IMAGE names: with --key, as cosign (tag sha256-<hex>.sig in the same repository);
        with --sign-by, a GPG simple signing signature in the registry's signature extension, else a lookaside."""
        from machines.trust import gpgsign, keys, sigstore

        if (key is None) == (sign_by is None):
            raise UsageError("give either --key (sigstore) or --sign-by (GPG)")
        if sign_by is not None:
            echo(f"Signature written to {gpgsign.sign(image, sign_by, lookaside, passphrase_file)}")
            return
        assert key is not None
        private = keys.decrypt_private_key(_read(key), keys.read_passphrase(passphrase_file, confirm=False))
        digest, tag = sigstore.sign(image, private)
        echo(f"Signed {digest}; signature stored as tag {tag}")

    @group.command()
    def verify(
        image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY[:TAG|@DIGEST] to verify.")],
        key: Annotated[Path, typer.Option("--key", help="The public key: PREFIX.pub, or a GPG public key.")],
        lookaside: Annotated[str | None, typer.Option(
            "--lookaside", metavar="URL", help="For a GPG key, when the registry has no signature extension: the "
            "lookaside folder or file:// / http(s):// URL.")
        ] = None,
    ) -> None:
        """Exit 0 when a signature by KEY names IMAGE's manifest digest and repository; else 1 and the reason."""
        from machines.trust import gpgsign, sigstore

        data = _read(key)
        if b"-----BEGIN PUBLIC KEY-----" in data:
            echo(f"Verified OK: {sigstore.verify(image, data)}")
            return
        echo(f"Verified OK: {gpgsign.verify(image, data, lookaside)}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read key {path}: {exc.strerror}") from None
