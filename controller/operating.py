"""The operating state: arming, the start-up line, and why a capture is dark.

Arming: from the safe state to the operating state, ramped, through the drivers' limits.

The daemon's safe state (laser off, bias at 0) persists in the instruments after a
stop, so a plain restart finds no light. Arming applies the config's
``daemon.operating_state.setpoints`` in order; each numeric set-point is ramped
from the instrument's present value in ``ramp_steps`` equal steps (an SNSPD bias or a
laser current should not jump), each step validated against the configured limits
exactly as an operator's ``qnet set`` is, then executed. Booleans (``laser_on``) are
switched once, in their place in the list, so the order in the config is the order on
the bench (bias first, laser last).

Arming is refused while any interlock is tripped, and stops at the first step after
one trips: the interlock's own actions are what should run then, not the ramp.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._daemon_config import DaemonConfig, OperatingState
from .commands import CommandError, DeviceSurface, PermissionsConfig, ValidRequest, validate_request

log = logging.getLogger("qnet.daemon")


class ArmingError(RuntimeError):
    """Arming was refused or stopped: the message says why and what to do."""


def ramp(start: float, target: float, steps: int) -> list[float]:
    """``steps`` values from just after ``start`` to exactly ``target`` (linear)."""
    steps = max(1, int(steps))
    return [start + (target - start) * k / steps for k in range(1, steps)] + [target]


async def arm(
    state: OperatingState,
    surfaces: Mapping[str, DeviceSurface],
    permissions: PermissionsConfig,
    *,
    execute: Callable[[ValidRequest], Awaitable[Any]],
    device_call: Callable[[str, Callable[[Any], Any]], Awaitable[Any]],
    tripped: Callable[[], list[str]],
) -> list[str]:
    """Apply ``state.setpoints`` (see the module docstring); returns one line per set-point.

    Every target is validated before anything is sent, so an out-of-range operating
    state changes nothing. Raises :class:`ArmingError` when refused or stopped.
    """

    def check(device: str, setting: str, value: Any) -> ValidRequest:
        body = {"id": "arming", "device": device, "setting": setting, "value": value}
        return validate_request(body, surfaces, permissions, role="system")

    try:
        for sp in state.setpoints:
            check(sp.device, str(sp.setting), sp.value)
    except CommandError as exc:
        raise ArmingError(f"arming refused: {exc.message}") from None

    def refuse_if_tripped(where: str) -> None:
        active = tripped()
        if active:
            raise ArmingError(
                f"arming {where}: interlock {', '.join(active)} tripped; find and clear its "
                "cause (qnet status shows the reading), then arm again"
            )

    refuse_if_tripped("refused")
    done: list[str] = []
    for sp in state.setpoints:
        device, setting = sp.device, str(sp.setting)
        spec = surfaces[device].settings[setting]
        if spec.kind == "bool" or isinstance(sp.value, bool):
            steps: list[Any] = [sp.value]
            frm = ""
        else:
            now = float(await device_call(device, spec.getter))
            steps = ramp(now, float(sp.value), state.ramp_steps) if now != sp.value else []
            frm = f" from {now:g}"
        for k, value in enumerate(steps):
            refuse_if_tripped(f"stopped at {device}.{setting} = {value!r}")
            try:
                await execute(check(device, setting, value))
            except CommandError as exc:
                raise ArmingError(f"arming stopped: {exc.message}") from None
            except Exception as exc:
                why = str(exc) or type(exc).__name__
                raise ArmingError(f"arming stopped at {device}.{setting}: {why}") from None
            if k < len(steps) - 1 and state.ramp_step_s > 0:
                await asyncio.sleep(state.ramp_step_s)
        n = f" in {len(steps)} steps" if len(steps) > 1 else ""
        done.append(
            f"{device}.{setting} = {sp.value!r}{frm}{n}"
            if steps
            else f"{device}.{setting} = {sp.value!r} (already)"
        )
    return done


def start_up_line(
    cfg: DaemonConfig,
    devices: Mapping[str, Mapping[str, Any]],
    broker: Any,
    broker_connected: bool,
    arming: bool,
) -> str:
    """``started node N from F: devices a ready, b faulted (why); broker ...; ...`` (one line).

    What an operator checks first after a start: which config, each device's state,
    whether the broker answers, what is analysed, which interlocks watch, and whether
    the node will be armed.
    """
    d = cfg.daemon
    devs = []
    for n, st in devices.items():
        why = (
            f" ({str(st.get('error'))[:80]})" if st["state"] != "ready" and st.get("error") else ""
        )
        devs.append(f"{n} {st['state']}{why}")
    if broker is None:
        where = "telemetry off (no broker)"
    else:
        up = (
            "connected"
            if broker_connected
            else f"not reached yet (retrying every {broker.reconnect_min_s:g} to "
            f"{broker.reconnect_max_s:g} s)"
        )
        where = f"broker {broker.host}:{broker.port} {up}"
    acq = d.acquisition
    what = (
        "no acquisition"
        if acq is None
        else f"acquisition {acq.n_channels} channels in {acq.window_s:g} s windows"
    )
    ops = d.operating_state
    if not ops.setpoints:
        armed = "no operating state configured"
    elif arming:
        armed = "arming to the operating state"
    else:
        armed = (
            "not armed: instruments keep their state (qnet run --arm applies the operating state)"
        )
    return (
        f"started node {cfg.node} from {cfg.path()}: devices {', '.join(devs) or 'none'}; "
        f"{where}; {what}; interlocks {', '.join(d.interlocks) or 'none'}; {armed}"
    )


async def light_hint(
    cfg: DaemonConfig,
    surfaces: Mapping[str, DeviceSurface],
    device_call: Callable[[str, Callable[[Any], Any]], Awaitable[Any]],
) -> str:
    """Why a capture may be dark, from the instruments' present state, and the fix.

    Compares each operating-state set-point with what the instrument holds now: a
    laser off and a bias at 0 after a stop are the safe state, which persists in the
    instruments until the node is armed.
    """
    ops = cfg.daemon.operating_state
    path = cfg.path()
    off = []
    for sp in ops.setpoints:
        spec = surfaces[sp.device].settings.get(str(sp.setting))
        if spec is None:
            continue
        try:
            now = await asyncio.wait_for(device_call(sp.device, spec.getter), 5.0)
        except Exception as exc:
            off.append(f"{sp.device}.{sp.setting} unreadable ({exc or type(exc).__name__})")
            continue
        same = now == sp.value or (
            isinstance(now, int | float)
            and not isinstance(now, bool)
            and math.isclose(float(now), float(sp.value), rel_tol=1e-3)
        )
        if not same:
            off.append(f"{sp.device}.{sp.setting} is {now!r} (operating state: {sp.value!r})")
    if off:
        return (
            f"Likely cause: {'; '.join(off)}: the safe state of the last stop persists in "
            f"the instruments. Fix: restart with `qnet run {path} --arm` (ramps to "
            f"daemon.operating_state), then `qnet calibrate {path}` if needed."
        )
    if ops.setpoints:
        return (
            "The instruments hold the operating state: check the fibers, the detectors and "
            f"the channel roles, then `qnet calibrate {path}`."
        )
    return (
        "Is the pump laser on and are the detectors biased? Put their set-points in "
        f"daemon.operating_state and restart with `qnet run {path} --arm`, or set them with "
        f"`qnet set {path} DEVICE SETTING VALUE`."
    )
