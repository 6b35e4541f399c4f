"""Emulators of the instruments qnet drives, one class per driver model.

Each emulator is a plain object: ``name``, ``terminator`` (ends each incoming
command line), ``reply_terminator`` (ends each reply), ``identity`` and
``handle(line) -> str | None`` (the reply, or None for a command without one).
State lives in plain attributes that the testbed may read and change;
physics-derived readings come from injectable callables. Emulators are not
thread-safe by themselves: :class:`drivers.sim.server.InstrumentServer` calls
``handle`` under ``emulator.lock``, and so should anyone touching state from
another thread. SCPI emulators keep an error queue (``SYST:ERR?``) and push
``-113`` for an unknown command and ``-222`` for a value the real instrument
would refuse. The constructor parameters and attributes documented in each
class are a stable interface (see ``drivers/sim/README.md``).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import deque
from collections.abc import Callable

import numpy as np

from coincidence import TagBatch

from .._tagframes import encode_frame

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def _onoff(text: str) -> bool | None:
    t = text.strip().upper()
    return True if t in ("ON", "1") else False if t in ("OFF", "0") else None


_SERIALS = itertools.count(1)
_SERIALS_LOCK = threading.Lock()


def next_serial() -> int:
    """A serial number no other emulator of this process has (1, 2, 3, ...).

    Each emulated instrument answers its identity query with its own serial, as real
    ones do; the testbed numbers its instruments itself so that they keep their serial
    from run to run.
    """
    with _SERIALS_LOCK:
        return next(_SERIALS)


class ScpiEmulator:
    """Shared parts of the SCPI emulators: identity, error queue, a command table."""

    name = "scpi"
    terminator = "\n"
    reply_terminator = "\n"
    identity_format = "qnet,emulator,{serial},0"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.serial = next_serial()
        self.errors: deque[str] = deque(maxlen=32)
        self.commands: deque[str] = deque(maxlen=100_000)
        self._queries: dict[str, Callable[[], str]] = {}
        self._sets: list[tuple[re.Pattern[str], Callable[[str], bool]]] = []

    @property
    def identity(self) -> str:
        """The identity reply, with this instrument's own serial number."""
        return self.identity_format.format(serial=self.serial)

    def query_cmd(self, command: str, fn: Callable[[], str]) -> None:
        """Register a query (matched case-insensitively, exact)."""
        self._queries[command.upper()] = fn

    def set_cmd(self, pattern: str, fn: Callable[[str], bool]) -> None:
        """Register a set command ``pattern`` (regex, one group); ``fn`` False = out of range."""
        self._sets.append((re.compile(pattern, re.IGNORECASE), fn))

    def handle(self, line: str) -> str | None:
        """Reply to one command line (None for a set command)."""
        line = line.strip()
        self.commands.append(line)
        if not line:
            return None
        upper = line.upper()
        if upper == "*IDN?":
            return self.identity
        if upper in ("SYST:ERR?", ":SYST:ERR?"):
            return self.errors.popleft() if self.errors else '0,"No error"'
        if upper in ("*RST", "*CLS"):
            self.errors.clear()
            return None
        if upper in self._queries:
            return self._queries[upper]()
        for pattern, fn in self._sets:
            m = pattern.fullmatch(line)
            if m:
                if not fn(m.group(1)):
                    self.errors.append('-222,"Data out of range"')
                return None
        self.errors.append(f'-113,"Undefined header;{line}"')
        return None


class CLD1015Emulator(ScpiEmulator):
    """Thorlabs CLD1015 laser diode + TEC controller.

    Args:
        read_tec_temperature_c: ``f(setpoint_c, tec_on) -> measured temperature``;
            default: the setpoint when the TEC is on, else 25.0.

    State: ``output_on``, ``tec_on``, ``current_setpoint_a``, ``tec_setpoint_c``,
    ``interlock_closed`` (False refuses and drops the laser output), ``keylock_ok``;
    read-only: ``tec_temperature_c``, ``laser_emitting``.
    Reading ``MEAS:CURR?`` gives the setpoint while the output is on, else 0.
    """

    name = "cld1015"
    identity_format = "Thorlabs,CLD1015,M{serial:08d},1.1.0"
    MAX_CURRENT_A = 1.5

    def __init__(
        self, read_tec_temperature_c: Callable[[float, bool], float] | None = None
    ) -> None:
        super().__init__()
        self.output_on = False
        self.tec_on = False
        self.current_setpoint_a = 0.0
        self.tec_setpoint_c = 25.0
        self.interlock_closed = True
        self.keylock_ok = True
        self.read_tec_temperature_c = read_tec_temperature_c or (lambda sp, on: sp if on else 25.0)
        self.query_cmd("OUTP1:STAT?", lambda: str(int(self.output_on)))
        self.query_cmd("OUTP2:STAT?", lambda: str(int(self.tec_on)))
        self.query_cmd("SOUR1:CURR?", lambda: f"{self.current_setpoint_a:.6E}")
        self.query_cmd("SOUR2:TEMP?", lambda: f"{self.tec_setpoint_c:.3f}")
        self.query_cmd(
            "MEAS:CURR?", lambda: f"{self.current_setpoint_a if self.laser_emitting else 0.0:.6E}"
        )
        self.query_cmd("MEAS:TEMP?", lambda: f"{self.tec_temperature_c:.3f}")
        self.query_cmd("OUTP:PROT:INTL:TRIP?", lambda: str(int(not self.interlock_closed)))
        self.query_cmd("OUTP:PROT:KEYL:TRIP?", lambda: str(int(not self.keylock_ok)))
        self.set_cmd(r"OUTP1:STAT (\w+)", self._set_output)
        self.set_cmd(r"OUTP2:STAT (\w+)", self._set_tec)
        self.set_cmd(r"SOUR1:CURR " + _NUM, self._set_current)
        self.set_cmd(r"SOUR2:TEMP " + _NUM, self._set_temp)

    @property
    def tec_temperature_c(self) -> float:
        """The TEC temperature ``MEAS:TEMP?`` reports now."""
        return float(self.read_tec_temperature_c(self.tec_setpoint_c, self.tec_on))

    @property
    def laser_emitting(self) -> bool:
        """True when current flows: output on and interlock closed."""
        return self.output_on and self.interlock_closed and self.keylock_ok

    def _set_output(self, v: str) -> bool:
        on = _onoff(v)
        if on is None or (on and not (self.interlock_closed and self.keylock_ok)):
            return False
        self.output_on = on
        return True

    def _set_tec(self, v: str) -> bool:
        on = _onoff(v)
        if on is None:
            return False
        self.tec_on = on
        return True

    def _set_current(self, v: str) -> bool:
        x = float(v)
        if not 0.0 <= x <= self.MAX_CURRENT_A:
            return False
        self.current_setpoint_a = x
        return True

    def _set_temp(self, v: str) -> bool:
        x = float(v)
        if not 5.0 <= x <= 45.0:
            return False
        self.tec_setpoint_c = x
        return True


class Keithley2400Emulator(ScpiEmulator):
    """Keithley 2400 sourcing current into an SNSPD, sensing voltage.

    Args:
        read_voltage_v: ``f(bias_current_a, latched) -> volts`` measured by ``:READ?``;
            default: 0 V superconducting, ``bias * latch_resistance_ohm`` (clipped at
            the compliance) when latched.
        critical_current_a: a bias above it latches the detector (default 20 uA).
        next_latched: ``f(latched, bias_a) -> latched`` after a bias change (output off
            counts as 0 A); default: latch above ``critical_current_a``, clear at 0 A. The
            testbed passes its physics' rule so served and in-process detectors agree.

    State: ``output_on``, ``bias_current_a``, ``compliance_v``, ``latched``
    (set it True to latch the detector; it clears when the bias drops to
    zero or the output turns off), ``latch_resistance_ohm``.
    """

    name = "k2400"
    identity_format = (
        "KEITHLEY INSTRUMENTS INC.,MODEL 2400,{serial:07d},C30 Mar 17 2006 09:29:29/A02 /K/J"
    )

    def __init__(
        self,
        read_voltage_v: Callable[[float, bool], float] | None = None,
        critical_current_a: float = 20e-6,
        next_latched: Callable[[bool, float], bool] | None = None,
    ) -> None:
        super().__init__()
        self.next_latched = next_latched
        self.output_on = False
        self.bias_current_a = 0.0
        self.compliance_v = 2.0
        self.latched = False
        self.critical_current_a = critical_current_a
        self.latch_resistance_ohm = 10e3
        self.read_voltage_v = read_voltage_v
        self.query_cmd(":OUTP?", lambda: str(int(self.output_on)))
        self.query_cmd(":SOUR:CURR?", lambda: f"{self.bias_current_a:.6E}")
        self.query_cmd(":SENS:VOLT:PROT?", lambda: f"{self.compliance_v:.6E}")
        self.query_cmd(":READ?", lambda: f"{self.voltage():+.6E}")
        self.set_cmd(r":OUTP (\w+)", self._set_output)
        self.set_cmd(r":SOUR:CURR " + _NUM, self._set_current)
        self.set_cmd(r":SENS:VOLT:PROT " + _NUM, self._set_compliance)
        self.set_cmd(r":SOUR:FUNC (CURR)", lambda _: True)
        self.set_cmd(r':SENS:FUNC ("VOLT")', lambda _: True)
        self.set_cmd(r":FORM:ELEM (VOLT)", lambda _: True)

    def voltage(self) -> float:
        """The voltage ``:READ?`` returns now."""
        if not self.output_on:
            return 0.0
        if self.read_voltage_v is not None:
            return float(self.read_voltage_v(self.bias_current_a, self.latched))
        if self.latched:
            return min(self.compliance_v, self.bias_current_a * self.latch_resistance_ohm)
        return 0.0

    def _update_latch(self) -> None:
        bias = self.bias_current_a if self.output_on else 0.0
        if self.next_latched is not None:
            self.latched = bool(self.next_latched(self.latched, bias))
        elif bias == 0.0:
            self.latched = False
        elif abs(bias) > self.critical_current_a:
            self.latched = True

    def _set_output(self, v: str) -> bool:
        on = _onoff(v)
        if on is None:
            return False
        self.output_on = on
        self._update_latch()
        return True

    def _set_current(self, v: str) -> bool:
        x = float(v)
        if abs(x) > 1.05:
            return False
        self.bias_current_a = x
        self._update_latch()
        return True

    def _set_compliance(self, v: str) -> bool:
        x = float(v)
        if not 0.0 <= x <= 210.0:
            return False
        self.compliance_v = x
        return True


class PM100Emulator(ScpiEmulator):
    """Thorlabs PM100D power meter.

    Args:
        read_power_w: ``f() -> optical power, W`` (default 1 uW).

    State: ``wavelength_m``, ``averages``.
    """

    name = "pm100"
    identity_format = "Thorlabs,PM100D,P{serial:07d},2.6.0"

    def __init__(self, read_power_w: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.wavelength_m = 1550e-9
        self.averages = 1
        self.read_power_w = read_power_w or (lambda: 1e-6)
        self.query_cmd("SENS:CORR:WAV?", lambda: f"{self.wavelength_m * 1e9:.3f}")
        self.query_cmd("SENS:AVER:COUN?", lambda: str(self.averages))
        self.query_cmd("MEAS:POW?", lambda: f"{self.read_power_w():.6E}")
        self.set_cmd(r"SENS:CORR:WAV " + _NUM, self._set_wav)
        self.set_cmd(r"SENS:AVER:COUN (\d+)", self._set_avg)

    def _set_wav(self, v: str) -> bool:
        x = float(v)
        if not 400.0 <= x <= 1800.0:
            return False
        self.wavelength_m = x * 1e-9
        return True

    def _set_avg(self, v: str) -> bool:
        n = int(v)
        if not 1 <= n <= 100000:
            return False
        self.averages = n
        return True


class ID120Emulator(ScpiEmulator):
    """ID Quantique ID120 SPAD module (serial ASCII commands, integer units).

    Args:
        read_count_rate_hz: ``f() -> detection rate, Hz`` (default: 1000 Hz while running, else 0;
            the testbed reads ``bias_v`` / ``dead_time_s`` from the emulator in its callable).
        read_temperature_c: ``f() -> APD temperature`` (default: the setpoint while running).

    State: ``bias_v``, ``threshold_v``, ``dead_time_s``, ``temperature_setpoint_c``,
    ``integration_time_s``, ``running``; read-only: ``count_rate_hz``, ``temperature_c``.
    """

    name = "id120"
    identity_format = "ID Quantique,ID120,{serial:04d},3.2.1"

    def __init__(
        self,
        read_count_rate_hz: Callable[[], float] | None = None,
        read_temperature_c: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.bias_v = 150.0
        self.threshold_v = 0.1
        self.dead_time_s = 1e-6
        self.temperature_setpoint_c = -40.0
        self.integration_time_s = 1.0
        self.running = True
        self.read_count_rate_hz = read_count_rate_hz or (lambda: 1000.0 if self.running else 0.0)
        self.read_temperature_c = read_temperature_c or (
            lambda: self.temperature_setpoint_c if self.running else 20.0
        )
        table = [
            ("BIAS:VOLTAGE", "bias_v", 1e6, 0, 250e6),
            ("THRESHOLD:VOLTAGE", "threshold_v", 1e6, 0, 1.047e6),
            ("DEADTIME:TIME", "dead_time_s", 1e9, 40, 1e6),
            ("REG:TEMP_SET_POINT", "temperature_setpoint_c", 1e3, -50e3, -10e3),
            ("COUNTERS:INTEGRATION_TIME", "integration_time_s", 1e3, 200, 100e3),
        ]
        for cmd, attr, scale, lo, hi in table:
            self.query_cmd(cmd + "?", self._getter(attr, scale))
            self.set_cmd(cmd + r" ([-+]?\d+)", self._setter(attr, scale, lo, hi))
        self.query_cmd("REG:MEASURED_TEMP?", lambda: str(round(self.temperature_c * 1e3)))
        self.query_cmd("COUNTERS:DETECTION_FREQ?", lambda: str(round(self.count_rate_hz)))
        self.query_cmd("REG:RUN?", lambda: "TRUE" if self.running else "FALSE")
        self.set_cmd(r"REG:RUN (TRUE|FALSE)", self._set_run)

    @property
    def count_rate_hz(self) -> float:
        """The detection rate ``COUNTERS:DETECTION_FREQ?`` reports now, Hz."""
        return float(self.read_count_rate_hz())

    @property
    def temperature_c(self) -> float:
        """The APD temperature ``REG:MEASURED_TEMP?`` reports now."""
        return float(self.read_temperature_c())

    def _getter(self, attr: str, scale: float) -> Callable[[], str]:
        return lambda: str(round(getattr(self, attr) * scale))

    def _setter(self, attr: str, scale: float, lo: float, hi: float) -> Callable[[str], bool]:
        def fn(v: str) -> bool:
            n = int(v)
            if not lo <= n <= hi:
                return False
            setattr(self, attr, n / scale)
            return True

        return fn

    def _set_run(self, v: str) -> bool:
        self.running = v.upper() == "TRUE"
        return True


class D3050Emulator:
    """Meadowlark D3050 four-channel liquid-crystal controller (echoes set commands).

    State: ``setpoints`` (four drive voltages, V, element 1 first; stored exactly
    as counts / 6553.5), ``temperature_k``, ``commands`` (the last 100 000 lines received).
    """

    name = "d3050"
    terminator = "\r"
    reply_terminator = "\r\n"
    identity_format = "Meadowlark Optics D3050 v1.05 SN{serial:05d} emulated"
    #: Drive-level counts per volt, and the highest level ``ld:k,counts`` accepts.
    COUNTS_PER_V = 6553.5
    MAX_COUNTS = 65535

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.serial = next_serial()
        self.counts = [0, 0, 0, 0]
        self.temperature_k = 300.0
        self.commands: deque[str] = deque(maxlen=100_000)

    @property
    def identity(self) -> str:
        """The version reply, with this instrument's own serial number."""
        return self.identity_format.format(serial=self.serial)

    @property
    def setpoints(self) -> list[float]:
        """Drive voltages of the four elements, V."""
        return [c / self.COUNTS_PER_V for c in self.counts]

    def handle(self, line: str) -> str | None:
        """Reply to one command line; unknown commands get ``?``."""
        line = line.strip()
        self.commands.append(line)
        if line == "ver:?":
            return self.identity
        if line == "ldd:?":
            return "ldd:" + ",".join(str(c) for c in self.counts)
        if line == "tmp:?":
            return f"tmp:{round(self.temperature_k * 65535 / 500)}"
        m = re.fullmatch(r"ld:([1-4]),(\?|\d+)", line)
        if m:
            k = int(m.group(1)) - 1
            if m.group(2) == "?":
                return f"ld:{k + 1},{self.counts[k]}"
            value = int(m.group(2))
            if value > self.MAX_COUNTS:
                return "?"
            self.counts[k] = value
            return line
        return "?"


def poisson_tags(
    rate_hz: float = 1e5, n_channels: int = 4, seed: int = 0
) -> Callable[[int], TagBatch]:
    """A default tag supplier: independent Poisson tags, contiguous batches from t = 0."""
    rng = np.random.default_rng(seed)
    state = {"t": 0}

    def supply(duration_ps: int) -> TagBatch:
        begin = state["t"]
        end = begin + int(duration_ps)
        n = rng.poisson(rate_hz * n_channels * duration_ps * 1e-12)
        ts = rng.integers(begin, end, size=n, dtype=np.int64)
        ch = rng.integers(0, n_channels, size=n).astype(np.uint8)
        state["t"] = end
        return TagBatch.sorted(ts, ch, begin, end)

    return supply


class ID1000Emulator(ScpiEmulator):
    """ID Quantique ID1000 Time Controller: SCPI part plus a tag stream.

    Args:
        tag_supplier: ``f(duration_ps) -> TagBatch`` covering the next ``duration_ps``
            (contiguous with the previous call); default :func:`poisson_tags`.
        read_counts: ``f() -> counts of inputs 1..4`` (default: tags per input in the
            last streamed frame, else zeros).
        read_histogram: ``f(hist, bin_width_ps, bin_count) -> counts`` (default zeros).
        frame_duration_ps: measured time per streamed frame (default 10 ms).

    State: ``thresholds_v`` (inputs 1..4), ``hist_bin_width_ps`` / ``hist_bin_count``
    (lists per block), ``streaming`` (set of inputs with ``RAW<n>:SEND ON``).
    """

    name = "id1000"
    identity_format = "ID Quantique,ID1000,TC-{serial:04d},2.1.0"

    def __init__(
        self,
        tag_supplier: Callable[[int], TagBatch] | None = None,
        read_counts: Callable[[], list[int]] | None = None,
        read_histogram: Callable[[int, int, int], list[int]] | None = None,
        frame_duration_ps: int = 10_000_000_000,
    ) -> None:
        super().__init__()
        self.thresholds_v = [0.5] * 4
        self.hist_bin_width_ps = [100] * 4
        self.hist_bin_count = [100] * 4
        self.streaming: set[int] = set()
        self.frame_duration_ps = int(frame_duration_ps)
        self.tag_supplier = tag_supplier or poisson_tags()
        self._last_counts = [0, 0, 0, 0]
        self.read_counts = read_counts or (lambda: list(self._last_counts))
        self.read_histogram = read_histogram or (lambda h, w, n: [0] * n)
        for k in range(1, 5):
            self.query_cmd(f"INPU{k}:COUN?", lambda k=k: str(self.read_counts()[k - 1]))
            self.query_cmd(f"INPU{k}:THRE?", lambda k=k: f"{self.thresholds_v[k - 1]:.3f}V")
            self.set_cmd(rf"INPU{k}:THRE {_NUM}V?", lambda v, k=k: self._set_thre(k, v))
            self.set_cmd(rf"RAW{k}:SEND (\w+)", lambda v, k=k: self._set_raw(k, v))
            self.query_cmd(
                f"HIST{k}:DATA?",
                lambda k=k: (
                    "["
                    + ",".join(
                        str(int(c))
                        for c in self.read_histogram(
                            k, self.hist_bin_width_ps[k - 1], self.hist_bin_count[k - 1]
                        )
                    )
                    + "]"
                ),
            )
            self.set_cmd(rf"HIST{k}:BWID (\d+)", lambda v, k=k: self._set_hist(k, v, width=True))
            self.set_cmd(rf"HIST{k}:BCOU (\d+)", lambda v, k=k: self._set_hist(k, v, width=False))
            self.set_cmd(rf"HIST{k}:(FLUS)", lambda v: True)

    def _set_thre(self, k: int, v: str) -> bool:
        x = float(v)
        if not -2.0 <= x <= 3.0:
            return False
        self.thresholds_v[k - 1] = x
        return True

    def _set_raw(self, k: int, v: str) -> bool:
        on = _onoff(v)
        if on is None:
            return False
        (self.streaming.add if on else self.streaming.discard)(k)
        return True

    def _set_hist(self, k: int, v: str, *, width: bool) -> bool:
        n = int(v)
        if width:
            if not 1 <= n <= 10**7:
                return False
            self.hist_bin_width_ps[k - 1] = n
        else:
            if not 1 <= n <= 16384:
                return False
            self.hist_bin_count[k - 1] = n
        return True

    def next_stream_frame(self) -> bytes | None:
        """The next stream frame while any input streams (None otherwise, time stands still)."""
        if not self.streaming:
            return None
        batch = self.tag_supplier(self.frame_duration_ps)
        keep = np.isin(batch.channels, [k - 1 for k in self.streaming])
        batch = TagBatch(batch.timestamps[keep], batch.channels[keep], batch.begin_ps, batch.end_ps)
        self._last_counts = [int(np.count_nonzero(batch.channels == k)) for k in range(4)]
        return encode_frame(batch)


#: Driver key (as in node configs) -> emulator class, for serving a config's instruments.
EMULATORS: dict[str, type] = {
    "thorlabs_cld1015": CLD1015Emulator,
    "keithley_2400": Keithley2400Emulator,
    "idq_id120": ID120Emulator,
    "thorlabs_pm100": PM100Emulator,
    "meadowlark_d3050": D3050Emulator,
    "idq_id1000": ID1000Emulator,
}
