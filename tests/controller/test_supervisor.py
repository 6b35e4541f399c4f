import asyncio
import time

from controller.config import InstrumentConfig
from controller.supervisor import DeviceUnavailable, DeviceWorker, Supervisor
from drivers.sim.instruments import CLD1015Emulator, PM100Emulator
from drivers.sim.server import InstrumentServer


def _worker(name, driver, port, **kw):
    ic = InstrumentConfig(
        driver=driver, resource=f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=0.3
    )
    inst = ic.build(name)
    return DeviceWorker(name, inst, call_timeout_s=2.0, backoff_max_s=0.4, **kw)


def test_faulted_device_reconnects_and_never_stops_the_other():
    laser_srv = InstrumentServer(CLD1015Emulator()).start()
    pm_srv = InstrumentServer(PM100Emulator(read_power_w=lambda: 1e-3)).start()
    states = []
    readings = {}

    async def main():
        laser = _worker(
            "laser",
            "thorlabs_cld1015",
            laser_srv.port,
            poll_interval_s=0.05,
            monitor={"on": lambda i: i.laser_on},
        )
        pm = _worker(
            "pm",
            "thorlabs_pm100",
            pm_srv.port,
            poll_interval_s=0.05,
            monitor={"power_w": lambda i: i.power_w},
        )
        sup = Supervisor(
            {"laser": laser, "pm": pm},
            on_state=lambda d, s, e: states.append((d, s)),
            on_readings=lambda d, r: readings.__setitem__(d, (time.monotonic(), r)),
        )
        sup.start()
        assert await sup.wait_ready(5.0)
        assert await laser.call(lambda i: i.laser_on) is False
        laser_srv.inject("disconnect")
        # the laser faults within a few polls
        for _ in range(100):
            if laser.state == "faulted":
                break
            await asyncio.sleep(0.05)
        assert laser.state == "faulted"
        try:
            await laser.call(lambda i: i.laser_on)
        except DeviceUnavailable as exc:
            assert "laser" in str(exc)
        else:
            raise AssertionError("a faulted device must refuse calls")
        # the power meter keeps being polled meanwhile
        t_fault = time.monotonic()
        for _ in range(100):
            if readings["pm"][0] > t_fault:
                break
            await asyncio.sleep(0.05)
        assert readings["pm"][0] > t_fault
        assert laser.state == "faulted"
        assert pm.state == "ready"
        laser_srv.restore()
        for _ in range(100):
            if laser.state == "ready":
                break
            await asyncio.sleep(0.05)
        assert laser.state == "ready"
        assert laser.reconnects >= 1
        st = sup.states()
        assert st["pm"]["readings"]["power_w"] == 1e-3
        await sup.stop()
        await sup.close()

    try:
        asyncio.run(main())
    finally:
        laser_srv.stop()
        pm_srv.stop()
    assert ("laser", "faulted") in states
    assert states.index(("laser", "faulted")) < len(states) - 1
    assert states[-1] == ("laser", "ready") or ("laser", "ready") in states


def test_unreachable_device_backs_off():
    async def main():
        w = _worker("ghost", "thorlabs_pm100", 1)  # nothing listens on port 1
        sup = Supervisor({"ghost": w})
        sup.start()
        await asyncio.sleep(1.0)
        assert w.state in ("faulted", "connecting")
        assert 1 <= w.errors <= 6  # backoff: not a tight loop
        await sup.stop()
        await sup.close()

    asyncio.run(main())
