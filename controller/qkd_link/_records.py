"""A link report -> the telemetry ``link`` record (Grafana link panels, ``qnet status``)."""

from __future__ import annotations

import time
from typing import Any

from ._engine import LinkReport


def link_record(
    report: LinkReport,
    *,
    node: str,
    counters: dict[str, Any] | None = None,
    store_stats: Any = None,
    time_ns: int | None = None,
) -> Any:
    """The ``link`` telemetry record of one site's report, channel counters and store stats.

    ``counters`` from :meth:`LinkPump.report` (bytes per second, connected);
    ``store_stats`` a ``kms.StoreStats`` (blocks, issuable bytes).
    """
    import telemetry as tm

    c = counters or {}
    fields: dict[str, Any] = {
        "offset_ps": report.offset_ps,
        "offset_uncertainty_ps": report.offset_uncertainty_ps,
        "ppm": report.ppm,
        "ppm_uncertainty": report.ppm_uncertainty,
        "lock_time_s": report.lock_time_s,
        "epochs": report.epochs,
        "epochs_unanswered": report.epochs_unanswered,
        "epochs_without_lock": report.epochs_without_lock,
        "sifted_bits": report.sifted_bits,
        "sifted_bps": report.sifted_rate_bps,
        "qber_z": report.qber_z,
        "qber_z_low": report.qber_z_low,
        "qber_z_high": report.qber_z_high,
        "qber_x": report.qber_x,
        "qber_x_low": report.qber_x_low,
        "qber_x_high": report.qber_x_high,
        "secret_bits": report.secret_bits,
        "secret_bps": report.secret_rate_bps,
        "ec_efficiency": report.ec_efficiency,
        "blocks_stored": report.blocks_stored,
        "blocks_discarded": report.blocks_discarded,
        "frames_aborted": report.frames_aborted,
        "refused": report.refused,
    }
    if report.auth_pool_bits >= 0:  # Wegman-Carter: what is left to authenticate with
        fields["auth_pool_bits"] = report.auth_pool_bits
    if "bytes_sent_per_s" in c:
        fields["channel_tx_bytes_per_s"] = float(c["bytes_sent_per_s"])
        fields["channel_rx_bytes_per_s"] = float(c["bytes_received_per_s"])
    if "connected" in c:
        fields["channel_connected"] = bool(c["connected"])
    if store_stats is not None:
        fields["store_blocks"] = int(store_stats.blocks)
        fields["store_issuable_bytes"] = int(store_stats.issuable_bytes)
        # keys handed to SAEs at this site: to master SAEs (enc_keys) and slaves (dec_keys)
        fields["delivered_keys"] = int(store_stats.issued_keys + store_stats.delivered_keys)
    for k, v in list(fields.items()):
        if isinstance(v, float | int) and not isinstance(v, bool):
            fields[k] = float(v) if isinstance(v, float) else int(v)
    return tm.link(
        node=node,
        link=report.link,
        role=report.role,
        lock_state=report.lock_state,
        time_ns=time_ns if time_ns is not None else time.time_ns(),
        **fields,
    )
