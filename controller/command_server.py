"""The daemon's command server: requests over MQTT in, one reply each out.

Requests arrive on ``qnet/v1/<node>/cmd/<user>/<suffix>`` and are answered on
``qnet/v1/<node>/reply/<user>/<suffix>`` (the broker's ACL lets each MQTT user
publish and read only its own; see ``configs/mosquitto/acl``). Each request
passes, in order and before anything reaches an instrument:

1. the schema (:func:`~controller.commands.parse_request`); a retained request
   is refused here, even the first time (the listener subscribes with MQTT 5's
   retain-as-published, so the flag is seen on live messages too);
2. the per-message authentication (:class:`~controller.commands.Authenticator`:
   HMAC, freshness, nonce never seen);
3. the device, name, value, safe range and role
   (:func:`~controller.commands.check_request`);
4. the user's token bucket (``rate_per_user_hz``, ``burst``): ``rate_limited``;

then ``execute`` runs it; a device with too many commands waiting answers
``busy`` (the supervisor's queue), and waiting there never counts as a device
timeout. Every request is logged once at INFO (user, target, value, outcome;
never the signature); repeated refusals of one kind from one user are
summarised instead of flooding the log. Replies awaiting the broker's PUBACK are
bounded (``max_reply_publishes``).

The server knows nothing of the daemon: it gets ``execute`` and an event sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from drivers import InstrumentError

from .commands import (
    DAEMON,
    Authenticator,
    CommandError,
    CommandSettings,
    DeviceSurface,
    PermissionsConfig,
    Request,
    ValidRequest,
    check_request,
    echoable_id,
    error_reply,
    ok_reply,
    parse_request,
)
from .supervisor import DeviceBusy, DeviceUnavailable

log = logging.getLogger("qnet.commands")

#: ``(kind, text, device)``: where the server reports listener events.
EventSink = Callable[[str, str, str | None], None]
#: Replies go at QoS 0: the listener's session is clean, so QoS 1 would not survive a lost
#: connection either, and each reply would wait for a PUBACK (aiomqtt then warns about
#: "pending publish calls" under load, and every reply costs another packet).
REPLY_QOS = 0
#: Per (user, code): this many refusal lines per ``_LOG_PERIOD_S``, then one summary.
_LOG_LINES = 5
_LOG_PERIOD_S = 10.0
_RETAINED = (
    "retained commands are not executed (a retained request would run again on every "
    "reconnect): publish it with retain=false"
)


class TokenBucket:
    """``rate_hz`` tokens a second up to ``burst``; ``take()`` spends one if there is one."""

    def __init__(self, rate_hz: float, burst: int) -> None:
        self.rate_hz = rate_hz
        self.burst = float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self) -> bool:
        """Spend a token; False if the bucket is empty (the request is over the rate)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate_hz)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _LogLimiter:
    """At most ``_LOG_LINES`` lines per key and period; then one line saying how many were held."""

    def __init__(self) -> None:
        self._window: dict[tuple[str, str], tuple[float, int]] = {}

    def allow(self, key: tuple[str, str]) -> tuple[bool, int]:
        """(log this one?, lines suppressed in the period that just ended)."""
        now = time.monotonic()
        start, n = self._window.get(key, (now, 0))
        held = 0
        if now - start >= _LOG_PERIOD_S:
            held = max(0, n - _LOG_LINES)
            start, n = now, 0
        self._window[key] = (start, n + 1)
        return n < _LOG_LINES, held


def _no_delay(client: Any) -> None:
    """TCP_NODELAY on an aiomqtt client's socket (paho does not set it).

    Replies then go out at once, not after Nagle's wait for the previous segment's ACK,
    which with delayed ACKs adds tens of ms per reply when many are in flight.
    """
    import socket

    with contextlib.suppress(Exception):  # best effort: a missing socket changes nothing
        client._client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _unsupported_protocol(rc: Any) -> bool:
    """Whether a CONNACK code says the broker does not speak the protocol version asked."""
    value = getattr(rc, "value", rc)
    return value in (1, 132)  # MQTT 3.1.1: 1 unacceptable version; MQTT 5: 0x84


def _target(req: Request | ValidRequest | None) -> str:
    if req is None:
        return "?"
    if isinstance(req, ValidRequest):
        return f"{req.device}.{req.name}"
    return f"{req.device}.{req.setting or req.action}"


class CommandServer:
    """Validate, authenticate, rate-limit, execute and answer requests for one node.

    Args:
        node: this node's name (the topics, and part of what a signature covers).
        broker: where to listen (None: no listener; ``handle_payload`` still works).
        settings: limits (skew, rate, in-flight requests and reply publishes).
        permissions: users, roles and secrets.
        surfaces: what each instrument offers (for validation).
        execute: runs a validated request; raises CommandError, DeviceUnavailable,
            DeviceBusy, TimeoutError or InstrumentError on failure.
        on_event: ``(kind, text, device)`` for the daemon's event list.
    """

    def __init__(
        self,
        node: str,
        broker: Any,
        settings: CommandSettings,
        permissions: PermissionsConfig,
        surfaces: Mapping[str, DeviceSurface],
        execute: Callable[[ValidRequest], Awaitable[Any]],
        on_event: EventSink,
    ) -> None:
        self.node = node
        self.broker = broker
        self.settings = settings
        self.surfaces = surfaces
        self.execute = execute
        self.on_event = on_event
        self.auth = Authenticator(permissions, node, max_skew_s=settings.max_skew_s)
        self.handled = 0
        self.refused = 0
        self.codes: Counter[str] = Counter()
        self.answers: set[asyncio.Task[None]] = set()  # being answered: shutdown cancels them
        self._buckets: dict[str, TokenBucket] = {}
        self._log_limit = _LogLimiter()

    def counters(self) -> dict[str, Any]:
        """Handled and refused requests, and the count of each error code."""
        return {"handled": self.handled, "refused": self.refused, "codes": dict(self.codes)}

    # -- one request --
    def _bucket(self, user: str | None) -> TokenBucket:
        key = user or ""
        b = self._buckets.get(key)
        if b is None:
            s = self.settings
            b = self._buckets[key] = TokenBucket(s.rate_per_user_hz, s.burst)
        return b

    def _log(
        self, req: Request | ValidRequest | None, user: str | None, outcome: str, code: str = ""
    ) -> None:
        """One INFO line per request (user, target, value, outcome); floods are summarised."""
        who = user or "anonymous"
        value = req.value if req is not None else None
        rid = echoable_id(req.id) if req is not None else None
        if code:
            ok, held = self._log_limit.allow((who, code))
            if held:
                log.info("%d more %s refusals for user %s not logged", held, code, who)
            if not ok:
                return
        log.info(
            "request %.40r user %s: %s value %.60r: %s", rid, who, _target(req), value, outcome
        )

    def _refuse(
        self,
        req: Request | ValidRequest | None,
        user: str | None,
        rid: Any,
        code: str,
        message: str,
        counted: bool = True,
    ) -> bytes:
        if counted:
            self.refused += 1
        self.codes[code] += 1
        self._log(req, user, f"refused ({code}): {message[:300]}", code)
        return error_reply(echoable_id(rid), code, message)

    async def handle_payload(self, payload: bytes | str, *, retained: bool = False) -> bytes:
        """Check, execute and answer one request (never raises; one reply, always)."""
        try:
            req = parse_request(payload)
        except CommandError as exc:
            return self._refuse(None, None, exc.request_id, exc.code, exc.message)
        except Exception as exc:  # defensive: a reply always goes out
            return self._refuse(None, None, None, "bad_request", f"unreadable request: {exc}")
        if retained:
            return self._refuse(req, req.user, req.id, "bad_request", _RETAINED)
        try:
            role = self.auth.role_of(req)
            vreq = check_request(req, self.surfaces, role)
        except CommandError as exc:
            return self._refuse(req, req.user, req.id, exc.code, exc.message)
        except Exception as exc:
            log.exception("request %.40r could not be checked", echoable_id(req.id))
            return self._refuse(req, req.user, req.id, "bad_request", f"unreadable request: {exc}")
        if not self._bucket(req.user).take():
            s = self.settings
            why = (
                f"user {req.user or 'anonymous'} is over {s.rate_per_user_hz:g} requests/s "
                f"(burst {s.burst}); slow down and retry"
            )
            return self._refuse(vreq, req.user, vreq.id, "rate_limited", why)
        try:
            result = await self.execute(vreq)
        except CommandError as exc:
            return self._refuse(vreq, req.user, vreq.id, exc.code, exc.message)
        except DeviceBusy as exc:
            return self._refuse(vreq, req.user, vreq.id, "busy", str(exc), counted=False)
        except DeviceUnavailable as exc:
            return self._fail(vreq, req.user, "device_unavailable", str(exc))
        except TimeoutError:
            return self._fail(
                vreq, req.user, "device_timeout", f"{vreq.device} did not answer in time"
            )
        except InstrumentError as exc:
            return self._fail(vreq, req.user, "device_error", str(exc))
        except Exception as exc:
            log.exception("request %r failed", vreq)
            return self._fail(vreq, req.user, "internal_error", f"{type(exc).__name__}: {exc}")
        self.handled += 1
        self._log(vreq, req.user, "ok")
        return ok_reply(vreq.id, result)

    def _fail(self, vreq: ValidRequest, user: str | None, code: str, message: str) -> bytes:
        """A request that passed every check but failed at the device."""
        return self._refuse(vreq, user, vreq.id, code, message, counted=False)

    # -- MQTT --
    async def run(self) -> None:
        """Listen for requests until cancelled; any failure is logged and retried with backoff.

        A broker outage, a missing password or TLS file, or a bug in one round must not end
        the listener: the daemon would keep running but could no longer be commanded.
        """
        import aiomqtt
        from aiomqtt.exceptions import MqttConnectError

        from telemetry import backoff_s, command_topic

        from ._broker import BrokerSetupError, connect_secrets

        b = self.broker
        where = "daemon.telemetry.broker"
        prefix = command_topic(self.node, "")
        attempt = 0
        protocol = aiomqtt.ProtocolVersion.V5
        while True:
            try:
                password, tls_context = connect_secrets(b, where)
                async with aiomqtt.Client(
                    b.host,
                    b.port,
                    identifier=f"{b.client_id}-cmd",
                    username=b.username,
                    password=password,
                    tls_context=tls_context,
                    keepalive=b.keepalive_s,
                    # MQTT 5: retain-as-published shows a retained request as such
                    protocol=protocol,
                ) as client:
                    attempt = 0
                    _no_delay(client)
                    await self._listen(client, prefix, protocol == aiomqtt.ProtocolVersion.V5)
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
            except MqttConnectError as exc:
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
                if protocol == aiomqtt.ProtocolVersion.V5 and _unsupported_protocol(exc.rc):
                    protocol, delay = aiomqtt.ProtocolVersion.V311, 0.0
                    log.warning(
                        "the broker does not speak MQTT 5 (%s): listening with MQTT 3.1.1, "
                        "where a retained request published while the daemon listens looks "
                        "live (signed requests still cannot be replayed)",
                        exc,
                    )
                else:
                    log.warning("command listener: %s; retry in %.1f s", exc, delay)
            except aiomqtt.MqttError as exc:
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
                log.warning("command listener: %s; retry in %.1f s", exc, delay)
            except BrokerSetupError as exc:
                delay = b.reconnect_max_s  # waits for someone to fix it: no need to hurry
                log.error(
                    "command listener cannot connect: %s; fix %s in the config "
                    "(requests are not answered until then); retry in %.1f s",
                    exc,
                    where,
                    delay,
                )
                self.on_event("mqtt", f"command listener: {exc}", None)
            except Exception as exc:
                delay = backoff_s(attempt, b.reconnect_min_s, b.reconnect_max_s)
                log.exception("command listener failed: %s; restarting it in %.1f s", exc, delay)
                self.on_event("mqtt", f"command listener failed: {type(exc).__name__}: {exc}", None)
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen(self, client: Any, prefix: str, v5: bool = True) -> None:
        """Subscribe to this node's commands and answer each (returns if the client stops)."""
        from paho.mqtt.subscribeoptions import SubscribeOptions

        from telemetry import reply_topic

        if v5:
            opts = SubscribeOptions(qos=1, retainAsPublished=True)
            await client.subscribe(prefix + "#", options=opts)
        else:
            await client.subscribe(prefix + "#", qos=1)
        self.on_event("mqtt", "command listener subscribed", None)
        # requests run concurrently (a calibration does not hold up a status), at most
        # max_inflight at a time; replies awaiting their PUBACK at most max_reply_publishes
        sem = asyncio.Semaphore(self.settings.max_inflight)
        publishing = asyncio.Semaphore(self.settings.max_reply_publishes)
        async for msg in client.messages:
            suffix = str(msg.topic)[len(prefix) :] or "default"
            payload = msg.payload if isinstance(msg.payload, bytes) else b""
            await sem.acquire()
            topic = reply_topic(self.node, suffix)
            task = asyncio.create_task(
                self._answer(client, topic, payload, sem, publishing, bool(msg.retain))
            )
            self.answers.add(task)
            task.add_done_callback(self.answers.discard)

    async def _answer(
        self,
        client: Any,
        topic: str,
        payload: bytes,
        sem: asyncio.Semaphore,
        publishing: asyncio.Semaphore,
        retained: bool,
    ) -> None:
        """Answer one request on ``topic``; releases ``sem`` when done."""
        import aiomqtt

        try:
            reply = await self.handle_payload(payload, retained=retained)
            async with publishing:
                await client.publish(topic, reply, qos=REPLY_QOS)
        except aiomqtt.MqttError as exc:
            log.warning("reply on %s lost: %s", topic, exc)
        finally:
            sem.release()


__all__ = ["DAEMON", "CommandServer", "TokenBucket"]
