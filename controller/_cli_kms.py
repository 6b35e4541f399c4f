"""``qnet certs DIR`` (a test PKI for KMEs and SAEs) and ``qnet kme CONFIG`` (serve ETSI 014)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``certs`` and ``kme`` commands to ``app``."""

    @app.command("certs")
    def certs(
        directory: Annotated[Path, typer.Argument(help="Folder for the CA, KME and SAE files.")],
        name: Annotated[
            list[str] | None,
            typer.Option(
                "--name",
                help="A certificate to make (repeat); the default makes kme-a, kme-b, "
                "sae-master and sae-slave.",
            ),
        ] = None,
    ) -> None:
        """Create a test CA and a certificate and key per KME and SAE (common name = ID).

        For the demo and for trying the key delivery API with curl; a real site uses its
        own CA. Private keys are written with mode 0600.
        """
        from kms import make_test_pki

        names = name or ["kme-a", "kme-b", "sae-master", "sae-slave"]
        try:
            pki = make_test_pki(directory, names)
        except OSError as exc:
            from controller._cli_options import fail

            fail("certs", exc.strerror or str(exc), str(exc.filename or directory))
        typer.echo(f"CA certificate: {pki.ca_cert}")
        for ident in pki.identities.values():
            typer.echo(f"{ident.name}: certificate {ident.cert}, key {ident.key}")

    @app.command("kme")
    def kme(
        config: Annotated[Path, typer.Argument(help="KME config YAML (see configs/kme-a.yaml).")],
    ) -> None:
        """Serve the ETSI GS QKD 014 key delivery API of one site until SIGINT/SIGTERM."""
        import asyncio
        import logging
        import signal

        from pydantic import ValidationError

        from configfile import ConfigFileError, load_mapping
        from controller._cli_options import fail
        from kms import KmeConfig, KmsError, start_kme

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            doc = load_mapping(config, "KME config")
            section = "kme" if "kme" in doc.data else None
            cfg = KmeConfig.model_validate(doc.data["kme"] if section else doc.data)
        except ConfigFileError as exc:
            fail("kme", exc.what, exc.where)
        except ValidationError as exc:
            err = exc.errors()[0]
            keys = ([section] if section else []) + [str(k) for k in err["loc"]]
            fail("kme", f"{'.'.join(keys)}: {err['msg']}", doc.where(keys))

        async def serve() -> None:
            server = await start_kme(cfg)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            typer.echo(f"KME {cfg.kme_id} serving ETSI GS QKD 014 at {server.url}")
            await stop.wait()
            await server.stop()

        try:
            asyncio.run(serve())
        except KmsError as exc:
            fail("kme", str(exc), str(config))
