"""``qnet keys``: the CURVE key pairs that authenticate the classical channel between nodes.

``qnet keys generate --node NAME --dir DIR`` writes ``NAME.key`` (the public key:
give it to the peer node, whose config pins it) and ``NAME.key_secret`` (mode
0600, stays on this node). ``qnet keys show FILE`` prints the public key of a
key file (never the secret). See docs/CHANNEL.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(
    help="CURVE key pairs for the authenticated channel between nodes.",
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


def register(app: typer.Typer) -> None:
    """Add ``qnet keys`` to the app."""
    app.add_typer(keys_app, name="keys")
