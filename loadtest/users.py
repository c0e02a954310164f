"""Locust users for every hubbub flow, their command-line options and the pass/fail gate.

Import this module from a locustfile (the ``locustfile_*.py`` files next to it do); the user
classes it defines are:

* ``DeviceUser``     a controlled RustDesk device: UDP registration and 15 s heartbeats, the
                     online query every 6 s while "the peer list is open", answers to pushes;
* ``ControllerUser`` a RustDesk controller: punch request, then a direct or relayed session that
                     carries bytes both ways (it brings its own device to connect to);
* ``WebDeviceUser`` a device in WebSocket mode: registration and pushes on one WebSocket;
* ``WebControllerUser`` the RustDesk web client: punch request and relay over WebSocket;
* ``RelayPairUser``  two relay halves with the same uuid pushing bytes both ways (throughput);
* ``PlayerUser``     a Wired spaces player: join, set_name, chat, 15 Hz movement, leave.

Every operation is a locust request event, so the statistics and the web UI show each one. The
``quitting`` hook turns the thresholds (``--max-fail-ratio``, ``--max-p95-ms``, ``--max-avg-ms``,
``--min-requests``) into the exit code of a headless run.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from typing import Any, Protocol

import gevent
import websocket
from locust import User, constant, events, task
from locust.env import Environment
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING, WorkerRunner

from hubbub.errors import HubbubError, LoadTestError
from loadtest.rustdesk_client import Controller, Device, RelayPair, online_bit, online_query
from loadtest.rustdesk_web import WebController, WsDevice
from loadtest.spaces_client import Player
from loadtest.targets import Target
from loadtest.thresholds import check_thresholds


__all__ = [
    "ControllerUser",
    "DeviceUser",
    "PlayerUser",
    "RelayPairUser",
    "WebControllerUser",
    "WebDeviceUser",
    "check_thresholds",
]

log = logging.getLogger("hubbub.loadtest")

class _Peer(Protocol):
    id: str
    ip: str


ONLINE: dict[str, _Peer] = {}
"""Devices of this load-generator process that are registered; controllers pick targets here."""
_PLAYERS = itertools.count()
_ids: tuple[int, itertools.count[int]] = (0, itertools.count())


def _new_id() -> str:
    """A fresh 9-digit device ID, distinct per load-generator process (``--processes`` forks)."""
    global _ids
    if _ids[0] != os.getpid():
        _ids = (os.getpid(), itertools.count(random.randrange(100_000_000, 900_000_000, 1000)))
    return str(next(_ids[1]))


def _tick_device(device: Device | WsDevice) -> bool:
    """One tick of a device's client timer; ``ONLINE`` lists it while it is registered.

    Returns False when the tick failed (the device client has reported it).
    """
    known = device.id  # a refused registration may renumber the device
    try:
        device.tick()
    except (OSError, HubbubError, websocket.WebSocketException):
        ONLINE.pop(known, None)
        return False
    if device.confirmed:
        ONLINE[device.id] = device
    return True


_STOPPING = (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP)
SETTLE = 2.0
"""Seconds after its first registration before a device expects to be reported online."""
NEVER_REGISTERED = "999999999999"
"""An ID no device uses: its online bit must be 0 in every answer."""


def _options(parser: Any) -> None:
    g = parser.add_argument_group("hubbub")
    g.add_argument("--rendezvous-port", type=int, default=21116,
                   help="RustDesk rendezvous port (NAT test / online query on port-1)")
    g.add_argument("--relay-port", type=int, default=21117, help="RustDesk relay port")
    g.add_argument("--spaces-port", type=int, default=4000, help="spaces WebSocket/HTTP port")
    g.add_argument("--licence-key", default="", help="the server public key clients send")
    g.add_argument("--heartbeat", type=float, default=15.0,
                   help="seconds between a device's RegisterPeer heartbeats (client: 15)")
    g.add_argument("--online-every", type=float, default=6.0,
                   help="seconds between online queries while the list is open (client: 6)")
    g.add_argument("--list-open", type=float, default=0.5,
                   help="share of devices whose peer list is open (0..1)")
    g.add_argument("--online-peers", type=int, default=20, help="IDs per online query")
    g.add_argument("--relay-ratio", type=float, default=0.3,
                   help="share of controller connections that force the relay (0..1)")
    g.add_argument("--relay-only-ratio", type=float, default=0.2,
                   help="share of controllers' devices that can only relay (0..1)")
    g.add_argument("--lan-ratio", type=float, default=0.2,
                   help="share of controller connections made from the device's own address "
                        "(same public IP: the LAN path)")
    g.add_argument("--one-ip", action="store_true",
                   help="all clients from 127.0.0.1 instead of one 127/8 address each")
    g.add_argument("--payload", type=int, default=4096,
                   help="bytes each controller session sends and gets echoed")
    g.add_argument("--connect-every", type=float, default=3.0,
                   help="mean seconds between a controller's connections")
    g.add_argument("--relay-chunk", type=int, default=1 << 20,
                   help="bytes per direction per relay-pair transfer")
    g.add_argument("--space-size", type=int, default=10,
                   help="players per space (per locust process: with --processes N, workers "
                        "share the spaces, so a space holds up to N times this)")
    g.add_argument("--move-hz", type=float, default=15.0, help="location records per second")
    g.add_argument("--chat-every", type=float, default=5.0,
                   help="mean seconds between a player's actions (chat, name, grounded)")
    g.add_argument("--max-fail-ratio", type=float, default=0.01,
                   help="headless exit code 1 when more requests fail than this")
    g.add_argument("--max-p95-ms", type=float, default=0.0,
                   help="exit code 1 when the total p95 exceeds this (0: no limit)")
    g.add_argument("--max-avg-ms", type=float, default=0.0,
                   help="exit code 1 when the total average exceeds this (0: no limit)")
    g.add_argument("--min-requests", type=int, default=0,
                   help="exit code 1 when fewer requests were made (0: no limit)")
    r = parser.add_argument_group("hubbub ramp (locustfile_ramp.py)")
    r.add_argument("--ramp-step", type=int, default=10, help="users added per step")
    r.add_argument("--ramp-every", type=float, default=15.0, help="seconds per step")
    r.add_argument("--ramp-max", type=int, default=500, help="most users")
    r.add_argument("--ramp-stop-p95-ms", type=float, default=500.0,
                   help="a step breaks when the current p95 exceeds this")
    r.add_argument("--ramp-stop-fail-ratio", type=float, default=0.01,
                   help="a step breaks when more of its requests fail than this")


def _gate(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    ramp = getattr(environment, "ramp_result", None)
    if environment.shape_class is not None:
        # A ramp ends by breaking a limit on purpose: its result is the capacity, not a failure.
        print(ramp.line() if ramp is not None else "ramp: stopped by the run time", flush=True)
        return
    problems = check_thresholds(environment.stats, environment.parsed_options)
    if problems:
        log.error("thresholds failed: %s", "; ".join(problems))
        environment.process_exit_code = 1
    else:
        log.info("thresholds passed")


_events: Any = events  # locust's EventHook.add_listener is untyped
_events.init_command_line_parser.add_listener(_options)
_events.quitting.add_listener(_gate)


def _target(env: Environment, host: str | None) -> Target:
    opts = env.parsed_options
    text = (host or "127.0.0.1").split("://", 1)[-1].rstrip("/")
    if text.startswith("["):
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return Target(host=text,
                  rendezvous_port=int(getattr(opts, "rendezvous_port", 21116)),
                  relay_port=int(getattr(opts, "relay_port", 21117)),
                  spaces_port=int(getattr(opts, "spaces_port", 4000)),
                  licence_key=str(getattr(opts, "licence_key", "") or ""),
                  spread_ips=not getattr(opts, "one_ip", False))


def _opt(env: Environment, name: str, default: Any) -> Any:
    value = getattr(env.parsed_options, name, None) if env.parsed_options else None
    return default if value is None else value


class _HubbubUser(User):
    abstract = True
    host = "127.0.0.1"

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.target = _target(environment, self.host)

    def record(self, request_type: str, name: str, response_time: float,
               response_length: int, exception: BaseException | None) -> None:
        runner = self.environment.runner
        if exception is not None and runner is not None and runner.state in _STOPPING:
            return  # the load generator tearing its own clients down, not the server failing
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=response_time,
            response_length=response_length, exception=exception, context={})


class DeviceUser(_HubbubUser):
    """A controlled RustDesk device on the 1 s client timer."""

    wait_time = constant(1)
    weight = 3

    def on_start(self) -> None:
        env = self.environment
        self.device = Device(self.target, _new_id(), self.record,
                             reg_interval=float(_opt(env, "heartbeat", 15.0)))
        self.device.start()
        self.list_open = random.random() < float(_opt(env, "list_open", 0.5))
        self.online_every = float(_opt(env, "online_every", 6.0))
        self.online_peers = max(2, int(_opt(env, "online_peers", 20)))
        self.next_query = random.uniform(0, self.online_every)
        self.elapsed = 0.0

    def on_stop(self) -> None:
        ONLINE.pop(self.device.id, None)
        self.device.stop()

    @task
    def tick(self) -> None:
        if not _tick_device(self.device):
            return
        self.elapsed += 1.0
        if self.list_open and self.elapsed >= self.next_query:
            self.next_query = self.elapsed + self.online_every
            self.query_online()

    def query_online(self) -> None:
        others = [i for i in ONLINE if i != self.device.id]
        peers = [self.device.id, NEVER_REGISTERED]
        peers += random.sample(others, min(len(others), self.online_peers - 2))
        start = time.perf_counter()
        exc: Exception | None = None
        try:
            states = online_query(self.target, self.device.id, peers, self.device.ip)
            # Other gateways learn a registration within their flush interval (about 1 s).
            settled = self.device.registered_at is not None and (
                time.monotonic() - self.device.registered_at >= SETTLE)
            if settled and not online_bit(states, 0):
                raise LoadTestError("own ID reported offline")
            if online_bit(states, 1):
                raise LoadTestError("an unknown ID reported online")
        except (OSError, HubbubError) as e:
            exc = e
        self.record("rustdesk", "TCP OnlineRequest", (time.perf_counter() - start) * 1000.0,
                    len(peers), exc)


class WebDeviceUser(_HubbubUser):
    """A controlled device in WebSocket mode: registered on one long-lived WebSocket."""

    wait_time = constant(1)
    weight = 1

    def on_start(self) -> None:
        self.device = WsDevice(self.target, _new_id(), self.record,
                               reg_interval=float(_opt(self.environment, "heartbeat", 15.0)))

    def on_stop(self) -> None:
        ONLINE.pop(self.device.id, None)
        self.device.stop()

    @task
    def tick(self) -> None:
        _tick_device(self.device)


class _ControllerBase(_HubbubUser):
    """A controller and the device it brings along (so targets exist in every worker)."""

    abstract = True

    def wait_time(self) -> float:
        mean = float(_opt(self.environment, "connect_every", 3.0))
        return random.uniform(0.5 * mean, 1.5 * mean)

    def on_start(self) -> None:
        env = self.environment
        self.controller = Controller(self.target, _new_id(), self.record)
        relay_only = random.random() < float(_opt(env, "relay_only_ratio", 0.2))
        self.device = Device(self.target, _new_id(), self.record, relay_only=relay_only,
                             reg_interval=float(_opt(env, "heartbeat", 15.0)))
        self.device.start()
        self.relay_ratio = float(_opt(env, "relay_ratio", 0.3))
        self.lan_ratio = float(_opt(env, "lan_ratio", 0.2))
        self.payload = int(_opt(env, "payload", 4096))
        self._heart = gevent.spawn(self._device_timer)

    def _device_timer(self) -> None:
        while True:
            _tick_device(self.device)
            gevent.sleep(1.0)

    def on_stop(self) -> None:
        if self._heart is not None:
            self._heart.kill(block=True, timeout=2)
        ONLINE.pop(self.device.id, None)
        self.device.stop()


class ControllerUser(_ControllerBase):
    """A RustDesk controller that connects to registered devices every few seconds."""

    weight = 1

    @task
    def connect(self) -> None:
        peers = list(ONLINE)
        if not peers:
            return
        peer = random.choice(peers)
        device = ONLINE.get(peer)
        lan = device is not None and random.random() < self.lan_ratio
        try:
            self.controller.connect(peer, force_relay=random.random() < self.relay_ratio,
                                    payload=self.payload,
                                    source_ip=device.ip if lan and device else None)
        except (OSError, HubbubError) as exc:
            self.record("rustdesk", "connect → failed", 0.0, 0, exc)


class WebControllerUser(_ControllerBase):
    """The RustDesk web client: punch request and relay session over WebSocket."""

    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.web = WebController(self.target, self.controller.id, self.record)

    @task
    def connect(self) -> None:
        peers = list(ONLINE)
        if not peers:
            return
        try:
            self.web.connect(random.choice(peers), payload=self.payload)
        except (OSError, HubbubError, websocket.WebSocketException) as exc:
            self.record("rustdesk", "web connect → failed", 0.0, 0, exc)


class RelayPairUser(_HubbubUser):
    """Two halves of one relay session moving ``--relay-chunk`` bytes each way per task."""

    wait_time = constant(0)
    weight = 1

    def on_start(self) -> None:
        self.pair: RelayPair | None = None
        self.chunk = int(_opt(self.environment, "relay_chunk", 1 << 20))

    def on_stop(self) -> None:
        if self.pair is not None:
            self.pair.close()

    @task
    def transfer(self) -> None:
        try:
            if self.pair is None:
                pair = RelayPair(self.target, self.record)
                pair.open()
                self.pair = pair
            self.pair.transfer(self.chunk)
        except (OSError, HubbubError, gevent.Timeout):
            if self.pair is not None:
                self.pair.close()
            self.pair = None
            gevent.sleep(1.0)  # do not spin on a dead relay


class PlayerUser(_HubbubUser):
    """A Wired spaces player: join, name, chat, move at 15 Hz, sometimes leave and rejoin."""

    weight = 1

    def wait_time(self) -> float:
        mean = float(_opt(self.environment, "chat_every", 5.0))
        return random.uniform(0.5 * mean, 1.5 * mean)

    def on_start(self) -> None:
        env = self.environment
        n = next(_PLAYERS)
        size = max(1, int(_opt(env, "space_size", 10)))
        self.uri = f"https://loadtest.hubbub.invalid/space-{n // size}.glb"
        self.move_hz = float(_opt(env, "move_hz", 15.0))
        self.player = Player(self.target, self.record, name=f"bot-{n}")
        self.enter()

    def enter(self) -> None:
        try:
            if self.player.ws is None:
                self.player.connect()
            self.player.join(self.uri)
            self.player.set_name(self.player.name)
            if self.move_hz > 0:
                self.player.start_moving(self.move_hz)
        except Exception:  # reported by the client; start over on the next action
            self.player.close()

    def on_stop(self) -> None:
        try:
            self.player.leave()
        except Exception:
            pass
        self.player.close()

    def _ready(self) -> bool:
        if self.player.space is None:
            self.enter()
        return self.player.space is not None

    @task(6)
    def chat(self) -> None:
        if self._ready():
            self._safe(self.player.chat)

    @task(2)
    def set_grounded(self) -> None:
        if self._ready():
            self._safe(lambda: self.player.set_grounded(random.random() < 0.8))

    @task(1)
    def profile(self) -> None:
        """Avatar or wallet address changes, as the app sends them on sign-in or a new VRM."""
        if self._ready():
            n = random.randrange(1000)
            if random.random() < 0.5:
                self._safe(lambda: self.player.set_avatar(
                    f"https://loadtest.hubbub.invalid/avatars/{n}.vrm"))
            else:
                self._safe(lambda: self.player.set_address(f"0x{n:040x}"))

    @task(1)
    def player_count(self) -> None:
        self._safe(lambda: self.player.player_count(self.uri))

    @task(1)
    def rejoin(self) -> None:
        if self._ready():
            self._safe(self.player.leave)
            self.enter()

    def _safe(self, action: Any) -> None:
        try:
            action()
        except (OSError, HubbubError):
            pass  # reported by the client already
        except Exception:
            self.player.close()
