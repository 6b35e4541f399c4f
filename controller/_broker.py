"""What a broker connection needs read from disk or the environment, with errors naming the key.

The daemon's command listener and the CLI's requests both connect with a config's
``BrokerSettings``; its password (env var or file) and TLS files are only read when
connecting, so a mistake there shows up then. :func:`connect_secrets` reads both and
turns a failure into a :class:`BrokerSetupError` that says which setting to fix.
"""

from __future__ import annotations

import ssl

from telemetry import BrokerSettings, SettingsError


class BrokerSetupError(ValueError):
    """The broker's password or TLS files cannot be read; the message names the setting."""


def connect_secrets(b: BrokerSettings, where: str) -> tuple[str | None, ssl.SSLContext | None]:
    """``(password, tls_context)`` for ``b``, read now; ``where`` names ``b`` in errors.

    Raises:
        BrokerSetupError: the password's env var or file is missing, or a TLS file
            (CA bundle, certificate, key) cannot be loaded.
    """
    try:
        password = b.password_value()
    except SettingsError as exc:
        raise BrokerSetupError(f"{where}.password: {exc}") from None
    if b.tls is None:
        return password, None
    try:
        return password, b.tls.context()
    except SettingsError as exc:  # e.g. "tls.ca_file /etc/ca.crt: No such file or directory"
        text = str(exc)
        raise BrokerSetupError(
            f"{where}.{text}" if text.startswith("tls.") else f"{where}.tls: {text}"
        ) from None
