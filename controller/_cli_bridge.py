"""``qnet bridge CONFIG``: run the MQTT -> InfluxDB telemetry bridge until SIGTERM/SIGINT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bridge`` command to ``app``."""

    @app.command("bridge")
    def bridge(
        config: Annotated[
            Path,
            typer.Argument(
                help="YAML file with broker, influx and spool sections (see configs/bridge.yaml)."
            ),
        ],
        log_level: Annotated[
            str, typer.Option(help="Logging level: DEBUG, INFO, WARNING, ERROR.")
        ] = "INFO",
        drain_s: Annotated[
            float,
            typer.Option(
                help="On stop, seconds to keep writing the spool before leaving the rest on disk."
            ),
        ] = 10.0,
    ) -> None:
        """Subscribe to node telemetry over MQTT and write it to an InfluxDB v2 write API.

        Nothing is lost: messages are acknowledged only once durably spooled, and spooled points
        are deleted only after the database confirmed the write. Stops on SIGTERM or SIGINT.
        """
        import logging
        import signal
        import threading

        from controller._cli_options import fail_text
        from telemetry import Bridge, SettingsError, load_bridge_settings

        level = getattr(logging, log_level.upper(), None)
        if not isinstance(level, int):
            fail_text("bridge", f"unknown log level {log_level!r}; use DEBUG, INFO, WARNING, ERROR")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            settings = load_bridge_settings(config)
            b, i = settings.broker, settings.influx
            # Resolve secrets now so a missing one is a usage error, not a retry loop.
            b.password_value()
            i.token_value()
            bridge_ = Bridge(settings)
        except SettingsError as exc:
            fail_text("bridge", str(exc), config)
        logging.getLogger("qnet.telemetry.bridge").info(
            "starting bridge: broker %s:%d client_id=%s user=%s tls=%s topics=%s -> %s bucket=%s "
            "spool=%s",
            b.host,
            b.port,
            b.client_id,
            b.username or "-",
            b.tls is not None,
            ",".join(settings.topics),
            i.url,
            i.bucket,
            settings.spool.path,
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        bridge_.start()
        failed = False
        while not stop.wait(1.0):
            if not bridge_.healthy():
                logging.getLogger("qnet.telemetry.bridge").error(
                    "a bridge thread died (see the traceback above); stopping"
                )
                failed = True
                break
        bridge_.stop(drain_s=drain_s)
        if failed:
            raise typer.Exit(1)
