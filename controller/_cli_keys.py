"""``qnet keys``: the CURVE key pairs that authenticate the classical channel between nodes.

``qnet keys generate --node NAME --dir DIR`` writes ``NAME.key`` (the public key:
give it to the peer node, whose config pins it) and ``NAME.key_secret`` (mode
0600, stays on this node). ``qnet keys show FILE`` prints the public key of a
key file (never the secret). ``qnet keys psk FILE`` writes the pre-shared secret
that Wegman-Carter authentication of the distillation starts from (one file, the
same at both nodes of a link). See docs/CHANNEL.md and docs/DISTILL.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(
    help="Key material of a link: CURVE key pairs for the channel, a Wegman-Carter secret.",
    no_args_is_help=True,
)


@keys_app.command("generate")
def generate(
    node: Annotated[str, typer.Option("--node", help="this node's name, e.g. alice")],
    directory: Annotated[
        Path, typer.Option("--dir", help="folder for NAME.key and NAME.key_secret")
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing key pair of this node")
    ] = False,
) -> None:
    """Create this node's key pair: NAME.key (public, for the peer) and NAME.key_secret (0600)."""
    from channel import KeyFileError, generate_keys, load_public_key

    try:
        public, secret = generate_keys(node, directory, overwrite=overwrite)
    except (KeyFileError, OSError) as e:
        typer.echo(f"qnet keys generate: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"public key  {public}  (give this file to the peer node)")
    typer.echo(f"secret key  {secret}  (mode 0600; never leaves this node)")
    typer.echo(f"public key: {load_public_key(public).decode()}")


@keys_app.command("show")
def show(
    path: Annotated[Path, typer.Argument(help="a .key or .key_secret file")],
) -> None:
    """Print the public key held in a key file (the secret key is never printed)."""
    from channel import KeyFileError, load_public_key

    try:
        typer.echo(load_public_key(path).decode())
    except KeyFileError as e:
        typer.echo(f"qnet keys show: {e}", err=True)
        raise typer.Exit(2) from None


@keys_app.command("psk")
def psk(
    path: Annotated[Path, typer.Argument(help="the secret file to write (mode 0600)")],
    size: Annotated[
        int, typer.Option("--bytes", min=256, max=1 << 24, help="secret size in bytes")
    ] = 4096,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing file")
    ] = False,
) -> None:
    """Write a pre-shared secret for Wegman-Carter authentication (copy it to the peer node)."""
    import os
    import secrets

    if path.exists() and not overwrite:
        typer.echo(
            f"qnet keys psk: error: {path} exists (pass --overwrite to replace it; "
            "the peer node must then get the new file too)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(size))
        os.chmod(path, 0o600)
    except OSError as e:
        typer.echo(f"qnet keys psk: error: cannot write {path}: {e.strerror}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"pre-shared secret  {path}  ({size} bytes, mode 0600)")
    typer.echo(
        "copy it to the peer node over a trusted path (never over the classical channel); "
        "both nodes' qkd_link.auth_secret_file name it"
    )


def register(app: typer.Typer) -> None:
    """Add ``qnet keys`` to the app."""
    app.add_typer(keys_app, name="keys")
