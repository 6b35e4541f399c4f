"""``qnet demo --link``: the two-site QKD link end to end, ending with a verdict.

:func:`run_link_demo` starts, on free loopback ports:

1. the two-site testbed: ``qnet sim configs/testbed-link.yaml --site alice`` and
   ``--site bob`` as two processes, each tagger on its own free clock;
2. the test PKI in the run folder (what ``qnet certs`` makes) and the two KMEs
   (ETSI GS QKD 014 over mutual TLS), site A with the master SAE, site B with
   the slave SAE;
3. each site's CURVE key pair (``channel.generate_keys``, as ``qnet keys`` does)
   and the WAN emulator between the two channel endpoints (latency, bandwidth
   cap, loss);
4. the link engine at both sites, each reading only its own tagger's stream:
   clock sync from the photons, sifting, estimation, Cascade, verification and
   privacy amplification, blocks into both key stores.

After ``duration_s`` it fetches a key with ``enc_keys`` at site A as the master
SAE and the same key ID with ``dec_keys`` at site B as the slave SAE, compares
them, prints one PASS/FAIL line per stage (figure and threshold) and writes
``link-demo.json`` (every raw figure) into the run folder. With
``keep_serving`` both KMEs stay up until Ctrl-C and the last lines say how to
reach them with curl.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._runs import new_run_dir

#: The link's name (the channel's link id and the telemetry tag).
LINK = "alice-bob"
#: The WAN between the two sites: one-way latency, bandwidth cap and segment loss
#: (a metropolitan link's classical channel; the reliability run adds a 30 s outage).
#: Cascade's round trips each cost the latency, so the sites' configs reconcile with
#: ``cascade_prefer: rounds`` and several frames in flight.
WAN = {"latency_s": 0.02, "bandwidth_bps": 10e6, "loss": 0.01}
#: Thresholds of the verdict.
MAX_QBER = 0.11
MAX_EC_EFFICIENCY = 1.25
MAX_PPM_ERROR = 1.0
KEY_BITS = 256
#: Longest wait for the frames in flight after the tag streams stop, seconds.
DRAIN_S = 60.0

Echo = Callable[[str], None]


# ----------------------------------------------------------------------------- formatting


def si(value: float | None, unit: str, digits: int = 3) -> str:
    """``value`` with an SI prefix for people: ``si(9123.4, "bit/s")`` -> ``9.12 kbit/s``."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value == 0:
        return f"0 {unit}"
    exp = min(max(math.floor(math.log10(abs(value)) / 3), -4), 4)
    prefix = {-4: "p", -3: "n", -2: "u", -1: "m", 0: "", 1: "k", 2: "M", 3: "G", 4: "T"}[exp]
    return f"{value / 10 ** (3 * exp):.{digits}g} {prefix}{unit}"


def grouped(n: int) -> str:
    """An integer in groups of three digits: ``12 345 678``."""
    return f"{n:,}".replace(",", " ")


def percent(x: float | None) -> str:
    """A ratio as a percentage with two significant decimals: ``1.13 %``."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"


@dataclass
class Stage:
    """One line of the verdict: what was checked, the figure found, the threshold."""

    name: str
    ok: bool
    figure: str
    threshold: str

    def line(self) -> str:
        """``PASS  name  figure  (threshold)``, fitted to 80 columns."""
        head = f"{'PASS' if self.ok else 'FAIL'}  {self.name:<20} "
        text = f"{self.figure}  ({self.threshold})"
        room = 80 - len(head)
        if len(text) <= room:
            return head + text
        return head + self.figure[:room] + "\n" + " " * len(head) + f"({self.threshold})"[:room]


@dataclass
class Verdict:
    """All stages, and whether every one passed."""

    stages: list[Stage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every stage passed (and there is at least one)."""
        return bool(self.stages) and all(s.ok for s in self.stages)

    def add(self, name: str, ok: bool, figure: str, threshold: str) -> None:
        """Append one stage."""
        self.stages.append(Stage(name, bool(ok), figure, threshold))

    def lines(self) -> list[str]:
        """The verdict block, each line at most 80 columns."""
        out = [s.line() for s in self.stages]
        out.append(f"VERDICT: {'PASS' if self.ok else 'FAIL'}")
        return out


# ----------------------------------------------------------------------------- processes


def _wait_port(port: int, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until 127.0.0.1:``port`` accepts a connection (RuntimeError if it never does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:g} s")


@contextlib.contextmanager
def sim_sites(testbed_yaml: Path, logs: Path) -> Iterator[dict[str, Any]]:
    """The two ``qnet sim --site`` processes, up until the block ends (stopped by pid)."""
    from drivers import socket_address
    from drivers.sim.testbed import TestbedConfig

    cfg = TestbedConfig.load(testbed_yaml)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for site in ("alice", "bob"):
            log = (logs / f"sim-{site}.log").open("wb")
            procs[site] = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "sim", str(testbed_yaml), "--site", site],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for site, tagger in (("alice", "alice_tagger"), ("bob", "bob_tagger")):
            _, port = socket_address(cfg.instruments[tagger].resource)
            _wait_port(port, 120.0, f"qnet sim --site {site}", procs[site])
        yield {"config": cfg, "processes": procs}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def open_tagger(cfg: Any, name: str) -> tuple[Any, Any]:
    """(driver, TagSource) of one served time tagger, streaming."""
    from drivers import make_instrument

    spec = cfg.instruments[name]
    driver = make_instrument(
        name, spec.driver, spec.resource, timeout_s=2.0, options={"stream_port": spec.stream_port}
    )
    driver.connect()
    driver.set_streaming(True)
    return driver, driver.tag_source()


# ----------------------------------------------------------------------------- ETSI 014


def _https(url: str, ctx: ssl.SSLContext, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST ``body``) over mutual TLS; the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.read())


def fetch_key_pair(url_a: str, url_b: str, pki: Any, master: str, slave: str) -> dict[str, Any]:
    """A key by ``enc_keys`` at site A (as the master SAE), the same ID by ``dec_keys`` at B."""
    from kms.testing import sae_ssl_context

    out: dict[str, Any] = {"ok": False}
    try:
        enc = _https(
            f"{url_a}/api/v1/keys/{slave}/enc_keys?number=1&size={KEY_BITS}",
            sae_ssl_context(pki, master),
        )
        key_id = enc["keys"][0]["key_ID"]
        dec = _https(
            f"{url_b}/api/v1/keys/{master}/dec_keys",
            sae_ssl_context(pki, slave),
            {"key_IDs": [{"key_ID": key_id}]},
        )
        out.update(
            key_id=key_id,
            identical=dec["keys"][0]["key"] == enc["keys"][0]["key"],
            key_bits=KEY_BITS,
        )
        out["ok"] = bool(out["identical"])
    except urllib.error.HTTPError as exc:
        out["error"] = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    except (OSError, KeyError, IndexError, ValueError) as exc:
        out["error"] = str(exc)
    return out


# ----------------------------------------------------------------------------- the run


@dataclass
class LinkDemoResult:
    """What the run measured: the engine's figures, the stores, the 014 fetch, the verdict."""

    run_dir: Path
    verdict: Verdict
    figures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-able."""
        return {
            "verdict": "PASS" if self.verdict.ok else "FAIL",
            "stages": [asdict(s) for s in self.verdict.stages],
            **self.figures,
        }


def _truth(cfg: Any, elapsed_sim_s: float) -> dict[str, float]:
    """What the clock sync should find, from the testbed config (not given to the engine)."""
    from drivers.sim.testbed import Testbed

    return Testbed(cfg).clock_truth(round(elapsed_sim_s * 1e12))


def judge(figures: dict[str, Any]) -> Verdict:
    """The verdict from the run's figures (each stage: figure and threshold)."""
    v = Verdict()
    eng = figures.get("engine") or {}
    truth = figures.get("clock_truth") or {}
    ppm, ppm_true = eng.get("clock_ppm"), truth.get("ppm")
    ppm_ok = ppm is not None and ppm_true is not None and abs(ppm - ppm_true) < MAX_PPM_ERROR
    off = eng.get("clock_offset_ps")
    v.add(
        "clock locked",
        bool(eng.get("clock_locked")) and ppm_ok,
        f"offset {si(None if off is None else off * 1e-12, 's', 7)}, "
        f"{'n/a' if ppm is None else f'{ppm:+.3f}'} ppm",
        f"locked; ppm within {MAX_PPM_ERROR:g} of "
        f"{'n/a' if ppm_true is None else f'{ppm_true:+.3f}'}",
    )
    na, nb = eng.get("sifted_bits_alice"), eng.get("sifted_bits_bob")
    v.add(
        "sifted positions",
        bool(eng.get("sifted_positions_identical")) and bool(na) and na == nb,
        f"A {grouped(int(na or 0))} bits, B {grouped(int(nb or 0))}; "
        f"{percent(eng.get('sifted_bit_error_rate'))} differ",
        "same positions, > 0",
    )
    for basis in ("z", "x"):
        q = eng.get(f"qber_{basis}")
        v.add(
            f"QBER {basis.upper()}",
            q is not None and q < MAX_QBER,
            f"{percent(q)} [{percent(eng.get(f'qber_{basis}_low'))}, "
            f"{percent(eng.get(f'qber_{basis}_high'))}]",
            f"< {percent(MAX_QBER)}",
        )
    f = eng.get("ec_efficiency")
    v.add(
        "EC efficiency",
        f is not None and 1.0 <= f <= MAX_EC_EFFICIENCY,
        "n/a" if f is None else f"f = {f:.3f}",
        f"1 <= f <= {MAX_EC_EFFICIENCY:g}",
    )
    rate = eng.get("secret_bps")
    v.add(
        "secret key rate",
        rate is not None and rate > 0,
        f"{si(rate, 'bit/s')} ({grouped(int(eng.get('secret_bits') or 0))} bits)",
        "> 0",
    )
    stuck = eng.get("frames_in_flight")
    auth = (
        f"Wegman-Carter, {grouped(int(eng.get('auth_bits_taken') or 0))} bits"
        if eng.get("auth") == "wegman-carter"
        else "channel"
    )
    v.add(
        "frames closed",
        stuck == 0 and bool(eng.get("frames")),
        f"{grouped(int(eng.get('frames') or 0))} frames, {grouped(int(stuck or 0))} open; "
        f"auth {auth}",
        "none left open",
    )
    sa, sb = figures.get("store_alice") or {}, figures.get("store_bob") or {}
    ka, kb = sa.get("blocks", 0), sb.get("blocks", 0)
    v.add(
        "keys in each store",
        ka > 0 and ka == kb and sa.get("stored_bytes") == sb.get("stored_bytes"),
        f"A {grouped(ka)} blocks ({si(8 * sa.get('stored_bytes', 0), 'bit')}), B {grouped(kb)}",
        "same blocks, > 0",
    )
    k = figures.get("etsi014") or {}
    v.add(
        "ETSI 014 key",
        bool(k.get("ok")),
        "enc_keys at A == dec_keys at B"
        if k.get("ok")
        else f"{k.get('error') or 'keys differ'}"[:50],
        f"one {KEY_BITS}-bit key, identical",
    )
    return v


def _store_stats(path: Path, site_index: int) -> dict[str, Any]:
    from kms import KeyStore

    store = KeyStore(path, site_index=site_index)
    try:
        return asdict(store.stats())
    finally:
        store.close()


def run_link_demo(
    duration_s: float,
    runs: Path,
    *,
    keep_serving: bool = False,
    speed: float = 1.0,
    echo: Echo = print,
    stop: threading.Event | None = None,
) -> LinkDemoResult:
    """Run the two-site demo (see the module docstring); returns the verdict and figures."""
    from channel import generate_keys
    from channel.testing import WanEmulator
    from controller.simnode import make_link_sites
    from kms.testing import MASTER_SAE, SLAVE_SAE, KmeThread, kme_pair_configs

    from . import _link_engine

    run_dir = new_run_dir(Path(runs), "link-demo").resolve()
    figures: dict[str, Any] = {"duration_s": duration_s, "wan": WAN, "link": LINK}
    testbed_yaml = make_link_sites(run_dir / "sites", speed=speed)
    cfg_a, cfg_b, pki = kme_pair_configs(run_dir)
    keys = run_dir / "keys"
    generate_keys("alice", keys)
    generate_keys("bob", keys)
    echo("qnet demo --link: two sites, one QKD link, keys through ETSI GS QKD 014")
    echo(f"run folder: {run_dir}")
    with contextlib.ExitStack() as stack:
        sites = stack.enter_context(sim_sites(testbed_yaml, run_dir))
        cfg = sites["config"]
        kme_a = stack.enter_context(KmeThread(cfg_a))
        kme_b = stack.enter_context(KmeThread(cfg_b))
        echo("sites up: one `qnet sim --site` process per site, each tagger on its clock")
        echo(f"KMEs: A {kme_a.url}, B {kme_b.url}")
        try:
            engine = _link_engine.start(
                cfg=cfg,
                keys=keys,
                stores=(cfg_a.store, cfg_b.store),
                link=LINK,
                wan=WAN,
                wan_factory=WanEmulator,
                open_tagger=open_tagger,
                sites_dir=testbed_yaml.parent,
            )
        except _link_engine.LinkEngineMissing as exc:
            for line in textwrap.wrap(f"cannot start the link: {exc}", 80):
                echo(line)
            figures["engine"] = {"error": str(exc)}
            engine = None
        if engine is not None:
            stack.callback(engine.stop)
            _run_for(engine, duration_s, stop, echo, figures)
        figures["clock_truth"] = _truth(cfg, float(figures["engine"].get("sim_time_s") or 0.0))
        figures["store_alice"] = _store_stats(cfg_a.store, 0)
        figures["store_bob"] = _store_stats(cfg_b.store, 1)
        figures["etsi014"] = fetch_key_pair(kme_a.url, kme_b.url, pki, MASTER_SAE, SLAVE_SAE)
        verdict = judge(figures)
        result = LinkDemoResult(run_dir, verdict, figures)
        (run_dir / "link-demo.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
        for line in verdict.lines():
            echo(line)
        echo(f"raw figures: {run_dir / 'link-demo.json'}")
        if keep_serving:
            _serve_until_interrupted(
                echo,
                stop,
                [("A", kme_a.url, MASTER_SAE, "master"), ("B", kme_b.url, SLAVE_SAE, "slave")],
                pki,
            )
    return result


def _run_for(
    engine: Any,
    duration_s: float,
    stop: threading.Event | None,
    echo: Echo,
    figures: dict[str, Any],
) -> None:
    """Let the link run for ``duration_s`` (or until ``stop``), then take its figures."""
    echo(
        f"link running over the WAN emulator ({si(WAN['latency_s'], 's')} one way, "
        f"{si(WAN['bandwidth_bps'], 'bit/s')}, {percent(WAN['loss'])} loss) for {duration_s:g} s"
    )
    done = stop or threading.Event()
    done.wait(duration_s)
    echo(f"stopping the tag streams; finishing the frames in flight (at most {DRAIN_S:g} s)")
    engine.drain(DRAIN_S)
    figures["engine"] = engine.figures()
    engine.stop()


def _serve_until_interrupted(
    echo: Echo,
    stop: threading.Event | None,
    sites: list[tuple[str, str, str, str]],
    pki: Any,
) -> None:
    """Print how to reach both KMEs, then wait for Ctrl-C / SIGTERM (or ``stop``).

    Both signals get a handler of their own: Python raises KeyboardInterrupt only when
    SIGINT was at its default at start-up, and a process started in the background by a
    non-interactive shell (nohup, ``&`` in a script) inherits SIGINT ignored.
    """
    done = stop or threading.Event()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: done.set())
    master = next(s for s in sites if s[3] == "master")
    slave = next(s for s in sites if s[3] == "slave")
    echo("")
    echo("Both KMEs keep serving until Ctrl-C. Try the ETSI GS QKD 014 API:")
    echo(
        f"curl --cacert {pki.ca_cert} --cert {pki[master[2]].cert} --key {pki[master[2]].key} "
        f"'{master[1]}/api/v1/keys/{slave[2]}/enc_keys?number=1&size={KEY_BITS}'"
    )
    for label, url, _, _ in sites:
        echo(f"KME {label}: {url}")
    for label, _, sae, role in sites:
        echo(f"{role} SAE at {label}: {sae}")
        echo(f"  certificate {pki[sae].cert}")
        echo(f"  key         {pki[sae].key}")
    echo(f"CA certificate: {pki.ca_cert}")
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(duration_s: float, runs: Path, keep_serving: bool, link: bool = True) -> int:
    """``qnet demo --link``: run, print the verdict; 0 on PASS, 1 on FAIL, 2 bad options."""
    if not link:
        from ._cli_options import fail

        fail("demo", "--keep-serving goes with --link (the two-site demo's KMEs)")
    result = run_link_demo(duration_s, runs, keep_serving=keep_serving)
    return 0 if result.verdict.ok else 1
