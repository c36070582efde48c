"""An adversary harness: real agents on a private Mosquitto, attacked from outside.

    creds = make_closed_zone(workdir / "admin", ["n1", "n2", "n3", "w", "mallory"])
    mesh = HostileMesh(workdir, creds, ["n1", "n2", "n3"])
    mesh.start()                                   # broker + `vsm-edge run` processes
    with Adversary(mesh.broker.port, MESH, "mallory", creds.keys["mallory"]) as mallory:
        mallory.announce()                         # its retained presence: its key is known
        mallory.send("sv", "digest", {"mesh": {"": [1, 1]}})
    report = mesh.check_invariant()                # alive, not quarantined, converged, writes

The mesh is **closed** (docs/security.md, "Setting up a closed mesh"): an
admin key, a zone file and a mesh secret made with the project's own command
line (``vsm-edge zone init|add``, ``vsm-edge policy sign``); every honest agent
gets ``[security] zone = "policy"`` and the signed policy in its data
directory (``data_dir/policy.cbor``, which an agent re-accepts at start), so
the zone is installed before the first message. ``mallory`` is a *member*:
its key is in the zone and it signs valid envelopes of its own making with
the project's wire format (``sign_envelope``, ``cbor_dumps``). The outsider
holds a key outside the zone, or none at all.

The invariant after every attack (:meth:`HostileMesh.check_invariant`):

1. every honest agent process is alive;
2. no honest node is in any honest agent's quarantine list;
3. the honest agents converge: at one moment (statuses polled in parallel)
   they report the same mesh-document digest fingerprint and key count;
4. an honest write made after the attack replicates: an operator alarm raised
   on each agent (``POST /alarm``) enters that agent's ``{node}/report``
   register in the mesh document, and every other agent's ``/view.json``
   (built from its mesh document) shows it.

Agents run a light configuration (no units, discovery off, status on an
ephemeral port, MQTT keepalive 5 s): they write their report every 2 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from support.brokers import Mosquitto
from support.mesh import AgentProcess, poll_statuses, wait_until
from vsm_edge.agent import StatusClientError
from vsm_edge.agent.cli.main import main as cli_main
from vsm_edge.sync import (
    NodeKey,
    ORMap,
    Timestamp,
    cbor_dumps,
    decode_envelope,
    save_node_key,
    save_public_key,
    sign_envelope,
    wall_clock_ms,
)

__all__ = [
    "MAX_COUNTER",
    "MESH",
    "Adversary",
    "Credentials",
    "HostileMesh",
    "InvariantReport",
    "MeshKeeper",
    "envelope_kind_and_kid",
    "make_closed_zone",
    "register_delta",
    "rss_kb",
    "wait_for",
]

MESH = "hx"
MAX_COUNTER = (1 << 63) - 1  # the largest dot counter (docs/protocol.md §3.1)
START_TIMEOUT_S = 45.0
CONVERGE_TIMEOUT_S = 15.0
MARKER_TIMEOUT_S = 15.0


# -- the closed zone -------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Keys and the signed policy of a closed mesh; ``keys`` by member name."""

    directory: Path
    keys: dict[str, NodeKey]
    admin: NodeKey
    outsider: NodeKey
    secret: Path
    policy: Path

    def key_file(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def make_closed_zone(directory: Path, members: Sequence[str], *, mesh: str = MESH) -> Credentials:
    """Keys for ``members`` (plus an admin and an outsider), a zone admitting the members.

    Uses the admin commands of the real command line (in-process): ``zone
    init``, ``zone add`` for each member's ``.pub``, ``policy sign``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    keys: dict[str, NodeKey] = {}
    for name in [*members, "admin", "outsider"]:  # what `vsm-edge keygen --out NAME.key` writes
        keys[name] = NodeKey.generate()
        save_node_key(keys[name], directory / f"{name}.key")
        save_public_key(keys[name].public_key, directory / f"{name}.pub")
    zone_file = str(directory / "zone.json")
    _cli("zone", "init", "--mesh", mesh, "--zone-file", zone_file)
    for name in members:
        _cli("zone", "add", str(directory / f"{name}.pub"), "--zone-file", zone_file)
    policy = directory / "policy.cbor"
    _cli("policy", "sign", "--admin-key", str(directory / "admin.key"),
         "--zone-file", zone_file, "--out", str(policy))  # fmt: skip
    admin, outsider = keys.pop("admin"), keys.pop("outsider")
    return Credentials(directory, keys, admin, outsider, directory / "mesh.secret", policy)


def _cli(*argv: str) -> None:
    code = cli_main(list(argv))
    if code != 0:
        raise RuntimeError(f"vsm-edge {' '.join(argv)} exited with {code}")


# -- honest agents ---------------------------------------------------------------------------


def _closed_config(name: str, data_dir: Path, broker: str, creds: Credentials) -> str:
    return f"""\
[node]
id = "{name}"
mesh = "{MESH}"
zone = "lab"
data_dir = "{data_dir}"
key_file = "{creds.key_file(name)}"

[broker]
url = "{broker}"
keepalive_s = 5

[discovery]
enabled = false

[status]
enabled = true
host = "127.0.0.1"
port = 0

[s5]
admin_keys = ["{creds.admin.public_key.hex()}"]

[security]
zone = "policy"
mesh_secret_file = "{creds.secret}"
"""


class HonestAgent(AgentProcess):
    """A ``vsm-edge run`` process in the closed mesh (its key in the zone, the policy kept)."""

    def __init__(self, workdir: Path, name: str, broker: str, creds: Credentials) -> None:
        super().__init__(workdir, name, broker, mesh=MESH, sensors=0, protocol="5")
        self.config_path.write_text(_closed_config(name, self.data_dir, broker, creds))
        shutil.copyfile(creds.policy, self.data_dir / "policy.cbor")

    def get(self, path: str) -> Any:
        """GET ``path`` on the status endpoint (None while it does not answer)."""
        client = self.client()
        if client is None:
            return None
        try:
            return client.request("GET", path)[1]
        except StatusClientError:
            return None

    def status_bytes(self) -> int:
        """The size of the status document as served (GET /status)."""
        client = self.client()
        assert client is not None
        _, doc = client.request("GET", "/status")
        return len(json.dumps(doc).encode())


def rss_kb(pid: int) -> int:
    """The resident set size of a process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class InvariantReport:
    """What :meth:`HostileMesh.check_invariant` measured."""

    converged_s: float = 0.0
    marker_s: float = 0.0
    keys: int = 0
    quarantines: dict[str, list[str]] = field(default_factory=dict)


class HostileMesh:
    """A private Mosquitto and honest agent processes in a closed zone."""

    def __init__(self, workdir: Path, creds: Credentials, names: Sequence[str]) -> None:
        self.workdir = workdir
        self.creds = creds
        self.broker = Mosquitto(workdir)
        self.agents = [HonestAgent(workdir, n, self.broker.url, creds) for n in names]
        self.markers = 0

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def agent(self, name: str) -> HonestAgent:
        return next(a for a in self.agents if a.name == name)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        for agent in self.agents:
            agent.start()
        self.wait_formed(START_TIMEOUT_S)

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda a: a.stop(), self.agents))
        self.broker.stop()

    def restart_agents(self, names: Sequence[str]) -> None:
        """SIGTERM the named agents, start them again on their data, wait for the mesh."""
        chosen = [self.agent(n) for n in names]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda a: a.stop(), chosen))
        for agent in chosen:
            agent.start()
        self.wait_formed(START_TIMEOUT_S)

    # -- observation -----------------------------------------------------------------------

    def dead(self) -> list[str]:
        """The names of the agents whose process has exited (empty: all alive)."""
        return [a.name for a in self.agents if not a.running]

    def statuses(self) -> list[dict[str, Any]] | None:
        """Every agent's status, polled in parallel; None if one does not answer.

        Raises AssertionError (with its log) when an agent process has exited.
        """
        found = poll_statuses(self.agents)
        if any(s is None for s in found):
            return None
        return [s for s in found if s is not None]

    def formed(self) -> bool:
        statuses = self.statuses()
        if statuses is None:
            return False
        names = set(self.names)
        for agent, status in zip(self.agents, statuses, strict=True):
            rep = status["replication"]
            if rep["transport"]["state"] != "connected":
                return False
            if not names - {agent.name} <= set(rep["online_peers"]):
                return False
            if status["gateway"]["zone_policy"] is None:
                return False
            if not all(rep["vv"].get(n, 0) > 0 for n in names):
                return False
        return True

    def wait_formed(self, timeout: float) -> None:
        wait_for(self.formed, timeout, "the honest agents to form the closed mesh", poll=0.25)

    def quarantines(self) -> dict[str, list[str]]:
        """Each agent's quarantine list (peer names)."""
        statuses = self.statuses()
        assert statuses is not None, "an agent's status endpoint does not answer"
        return {
            a.name: [q["peer"] for q in s["gateway"]["quarantine"]]
            for a, s in zip(self.agents, statuses, strict=True)
        }

    def logs(self, lines: int = 25) -> str:
        return "\n".join(f"--- {a.name}\n{a.log_tail(lines)}" for a in self.agents)

    # -- the invariant -------------------------------------------------------------------

    def check_invariant(
        self,
        *,
        honest: Sequence[str] = (),
        converge_timeout: float = CONVERGE_TIMEOUT_S,
        marker_timeout: float = MARKER_TIMEOUT_S,
    ) -> InvariantReport:
        """Assert the invariant of the module docstring; what it measured.

        ``honest`` names more honest nodes (writers) that must not be quarantined.
        """
        report = InvariantReport()
        dead = self.dead()
        assert not dead, f"honest agent(s) {dead} died:\n{self.logs()}"
        good = set(self.names) | set(honest)
        statuses = self.statuses()
        assert statuses is not None, f"an agent's status endpoint does not answer:\n{self.logs()}"
        report.quarantines = {
            a.name: [q["peer"] for q in s["gateway"]["quarantine"]]
            for a, s in zip(self.agents, statuses, strict=True)
        }
        wrongly = {
            a.name: [q for q in s["gateway"]["quarantine"] if q["peer"] in good]
            for a, s in zip(self.agents, statuses, strict=True)
        }
        wrongly = {a: q for a, q in wrongly.items() if q}
        assert not wrongly, f"honest nodes quarantined (by agent): {wrongly}"

        started = time.monotonic()
        self.wait_converged(converge_timeout)
        report.converged_s = time.monotonic() - started
        statuses = self.statuses()
        assert statuses is not None
        report.keys = statuses[0]["replication"]["keys"]

        started = time.monotonic()
        self.wait_markers(marker_timeout)
        report.marker_s = time.monotonic() - started
        dead = self.dead()
        assert not dead, f"honest agent(s) {dead} died:\n{self.logs()}"
        return report

    def converged(self) -> bool:
        statuses = self.statuses()
        if statuses is None:
            return False
        seen = {(s["replication"]["digest"], s["replication"]["keys"]) for s in statuses}
        return len(seen) == 1

    def wait_converged(self, timeout: float) -> None:
        def done() -> bool:
            return self.converged()

        try:
            wait_for(done, timeout, "the honest agents to converge", poll=0.1)
        except AssertionError:
            statuses = self.statuses() or []
            detail = {
                a.name: (s["replication"]["digest"], s["replication"]["keys"],
                         s["replication"]["vv"])
                for a, s in zip(self.agents, statuses, strict=True)
            }  # fmt: skip
            raise AssertionError(
                f"honest agents did not converge in {timeout} s: {detail}"
            ) from None

    def raise_marker(self, name: str) -> str:
        """An operator alarm on ``name``: it enters the node's report register; its id."""
        self.markers += 1
        answer = self.agent(name).raise_alarm(0.2, f"harness.marker{self.markers}", "marker")
        return str(answer["id"])

    def sees_marker(self, viewer: str, origin: str, marker: str) -> bool:
        view = self.agent(viewer).get("/view.json")
        if not isinstance(view, dict):
            return False
        for node in view.get("nodes", []):
            if node.get("node") == origin:
                return marker in node.get("alarms", [])
        return False

    def wait_markers(self, timeout: float, origins: Sequence[str] | None = None) -> None:
        """A write on each of ``origins`` (default: every agent) reaches every other agent."""
        marks = {o: self.raise_marker(o) for o in (origins or self.names)}

        def missing() -> list[tuple[str, str]]:
            return [
                (origin, viewer)
                for origin, marker in marks.items()
                for viewer in self.names
                if viewer != origin and not self.sees_marker(viewer, origin, marker)
            ]

        deadline = time.monotonic() + timeout
        left = missing()
        while left:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"honest writes made after the attack did not replicate within {timeout} s "
                    f"(origin, viewer): {left}"
                )
            time.sleep(0.2)
            left = missing()


def wait_for(predicate: Any, timeout: float, what: str, *, poll: float = 0.2) -> Any:
    """Poll ``predicate()`` until truthy; AssertionError naming ``what`` after ``timeout``."""
    return wait_until(predicate, timeout, what, poll=poll)


class MeshKeeper:
    """Hands out a healthy mesh: the module's shared one, or a fresh one.

    Starting agent processes costs seconds on two shared cores, so the tests
    of a module share one mesh; but an attack that succeeds (a dead agent, a
    quarantined honest node, a poisoned document, a hostile retained message)
    must not leak into the next test. :meth:`mesh` reuses the current mesh
    only when it still satisfies the cheap half of the invariant and was not
    :meth:`discard`-ed; otherwise it starts a new one (new broker, new keys,
    new data directories).
    """

    def __init__(self, workdir: Path, names: Sequence[str], extra_members: Sequence[str]) -> None:
        self.workdir = workdir
        self.names = list(names)
        self.members = [*names, *extra_members]
        self.current: HostileMesh | None = None
        self.generation = 0

    def mesh(self) -> HostileMesh:
        if self.current is not None and self._healthy(self.current):
            return self.current
        self.discard()
        self.generation += 1
        base = self.workdir / f"mesh{self.generation}"
        creds = make_closed_zone(base / "admin", self.members)
        mesh = HostileMesh(base, creds, self.names)
        try:
            mesh.start()
        except BaseException:
            print(mesh.logs())
            mesh.close()
            raise
        self.current = mesh
        return mesh

    def discard(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    @staticmethod
    def _healthy(mesh: HostileMesh) -> bool:
        if mesh.dead():
            return False
        try:
            # Any quarantine at all: an honest node's is a failed invariant, and
            # a quarantined adversary would make the next attack vacuous.
            if any(mesh.quarantines().values()):
                return False
            wait_for(mesh.formed, 10, "the mesh to be formed")
            mesh.wait_converged(10)
        except AssertionError:
            return False
        return True


# -- the adversary ---------------------------------------------------------------------------


class Adversary:
    """A plain MQTT client that signs its own envelopes (or none) and publishes them.

    ``key`` signs; ``node`` is the name it claims (its presence and broadcast
    topics). Envelopes carry a fresh HLC from the wall clock and a random
    nonce, so that the gateway's freshness and replay checks pass: what is
    tested is what the receivers do with the *contents*.
    """

    def __init__(
        self,
        port: int,
        mesh: str,
        node: str,
        key: NodeKey | None,
        *,
        client_id: str | None = None,
    ) -> None:
        self.mesh = mesh
        self.node = node
        self.key = key
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._logical = 0
        self._last_wall = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"adversary-{node}-{os.getpid()}",
            protocol=paho.MQTTv5,
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise RuntimeError("the adversary could not connect to the broker")

    def __enter__(self) -> Adversary:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    # -- envelopes -----------------------------------------------------------------------

    def hlc(self) -> int:
        """A fresh packed HLC stamp (wall ms now, a logical counter that only grows)."""
        wall = wall_clock_ms()
        if wall <= self._last_wall:
            self._logical += 1
            if self._logical > 0xFFFF:
                self._last_wall += 1
                self._logical = 0
            wall = self._last_wall
        else:
            self._last_wall, self._logical = wall, 0
        return Timestamp(wall, self._logical).packed

    def seal(self, kind: str, body: Any, *, key: NodeKey | None = None, raw: bool = False) -> bytes:
        """A signed envelope of ``kind``: ``body`` CBOR-encoded (``raw``: ``body`` is bytes)."""
        signer = key or self.key
        assert signer is not None, "this adversary holds no key"
        payload = body if raw else cbor_dumps(body)
        return sign_envelope(payload, signer, hlc=self.hlc(), kind=kind, nonce=os.urandom(16))

    def topic(self, channel: str, node: str | None = None) -> str:
        return f"vsm/{self.mesh}/{channel}/{node or self.node}"

    # -- publishing ----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.sent_messages += 1
        self.sent_bytes += len(payload)
        info.wait_for_publish(timeout=10)

    def publish_many(self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1) -> None:
        infos = []
        for topic, payload in messages:
            infos.append(self.client.publish(topic, payload, qos=qos))
            self.sent_messages += 1
            self.sent_bytes += len(payload)
        for info in infos:
            info.wait_for_publish(timeout=30)

    def presence(
        self,
        node: str | None = None,
        *,
        inc: int | None = None,
        state: str = "online",
        key: NodeKey | None = None,
    ) -> bytes:
        """A presence envelope for ``node`` (default: our own name) with ``key``'s public key."""
        signer = key or self.key
        assert signer is not None
        body = {
            "node": node or self.node,
            "pk": signer.public_key,
            "inc": self.hlc() if inc is None else inc,
            "state": state,
            "zone": "lab",
            "mesh": self.mesh,
            "broker": "",
        }
        return self.seal("presence", body, key=signer)

    def announce(self, node: str | None = None, *, inc: int | None = None) -> None:
        """Publish our presence (retained, as every node does): receivers learn our key."""
        name = node or self.node
        self.publish(self.topic("presence", name), self.presence(name, inc=inc), retain=True)

    def send(self, channel: str, kind: str, body: Any, *, to: str | None = None) -> bytes:
        """Sign ``body`` and publish it on ``channel`` (``to``: on ``to/{to}``); the bytes."""
        envelope = self.seal(kind, body)
        topic = self.topic("to", to) if to is not None else self.topic(channel)
        self.publish(topic, envelope, qos=0 if kind == "digest" and to is None else 1)
        return envelope

    # -- receiving -----------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        if not done.wait(10):
            raise RuntimeError(f"no SUBACK for {topic}")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))

    def take(self) -> list[tuple[str, bytes]]:
        """The messages received so far (and forget them)."""
        with self._lock:
            out, self.received = self.received, []
            return out


def register_delta(
    context: dict[str, list[int]],
    entries: Sequence[tuple[str, tuple[str, int], Any]],
    *,
    stamp: int,
) -> bytes:
    """The encoding of an ``mesh``-document delta (an ORMap of HLC-ordered registers).

    ``context`` is the delta's causal context as on the wire; each entry is
    ``(key, (node, counter), value)``: a register under ``key`` whose one
    value sits at that dot, stamped ``stamp``. Checked with the project's own
    strict decoder, so what is sent is a *valid* delta.
    """
    store = [
        [12, key, [[[node, counter], [stamp, node, value]]]]
        for key, (node, counter), value in entries
    ]
    obj = [14, context, store, []]
    ORMap.from_cbor(obj)  # raises MalformedError if this is not a valid delta
    return cbor_dumps(obj)


def envelope_kind_and_kid(payload: bytes) -> tuple[str, bytes]:
    """The ``kind`` and ``kid`` of an envelope (structure only, not verified)."""
    envelope = decode_envelope(payload)
    return envelope.kind, envelope.kid


@contextlib.contextmanager
def adversary(mesh: HostileMesh, name: str = "mallory") -> Iterator[Adversary]:
    """A member adversary named ``name``, its presence announced and known to every agent."""
    with Adversary(mesh.broker.port, MESH, name, mesh.creds.keys[name]) as adv:
        adv.announce()

        def known() -> bool:
            statuses = mesh.statuses()
            return statuses is not None and all(
                name in s["replication"]["online_peers"] for s in statuses
            )

        wait_for(known, 15, f"every agent to know {name}'s presence", poll=0.1)
        yield adv
