"""A 3-node RabbitMQ 3.10 cluster on loopback with its MQTT plugin: the clustered MQTT tier that
``benchmarks.mqtt_tier`` measures against Mosquitto (docs/ingest.md, "MQTT tier scale-out").

Not part of ``larder stack up``: Mosquitto stays the default broker. This module lets the project's own files
install (apt ``rabbitmq-server``, Debian 12 ships 3.10.8), start, cluster, configure and stop the cluster:

- every node is a separate Erlang VM started from ``/usr/lib/rabbitmq/bin/rabbitmq-server`` (the real
  script, not Debian's wrapper, which would ``su rabbitmq`` and write under /var/lib/rabbitmq), with its own
  node name, AMQP/MQTT/distribution ports, ``RABBITMQ_MNESIA_BASE`` and ``RABBITMQ_LOG_BASE`` under
  ``<state_dir>/rabbitmq/node<n>``, and an epmd of its own port, so a stack never meets another one;
- one Erlang cookie for the cluster, ``<state_dir>/rabbitmq/.erlang.cookie`` (mode 0400, found through HOME
  by the nodes and by ``rabbitmqctl``);
- ``rabbitmq-plugins --offline enable rabbitmq_mqtt`` into each node's own enabled-plugins file;
- nodes 2..n ``join_cluster`` node 1 on their first start (a restarted node rejoins by itself);
- one ``import_definitions`` applies: the ``larder`` vhost, the quorum queue ``larder.readings`` (3 replicas)
  bound to ``amq.topic`` for ``larder.v1.devices.#``, a user per device that may write only its own routing
  key ``larder.v1.devices.<id>.readings`` (MQTT topic ``larder/v1/devices/<id>/readings``; the plugin maps
  ``/`` to ``.``), and the bridge user, which may only consume that queue. ``guest`` is deleted.

Why ``#`` and not ``*`` in the binding: a message that matches no binding is confirmed by RabbitMQ and
dropped, and the MQTT plugin PUBACKs it. With ``#`` everything a device is allowed to publish lands in the
queue (a device id containing a dot would not match ``*``); the permissions, not the binding, decide who may
publish what.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# amqp_topology's names are re-exported: the definitions below and the callers use what the bridge consumes by.
from pipeline.ingest import amqp_topology
from pipeline.ingest.amqp_topology import BINDING as BINDING
from pipeline.ingest.amqp_topology import EXCHANGE as EXCHANGE
from pipeline.ingest.amqp_topology import QUEUE as QUEUE
from pipeline.ingest.amqp_topology import VHOST as VHOST
from pipeline.ingest.amqp_topology import routing_key as routing_key
from pipeline.settings import Settings
from pipeline.stack.process import (
    StackError,
    apt_install,
    pid_alive,
    port_open,
    read_pid,
    run,
    start_daemon,
    stop_pid,
    tail,
    wait_until,
)

SBIN = Path("/usr/lib/rabbitmq/bin")
_LOOPBACK_DIST = "-kernel inet_dist_use_interface {127,0,0,1}"


@dataclass(frozen=True)
class RabbitCluster:
    """Where the cluster lives: ports derive from ``base_port`` (10 per node), files from ``root``."""

    root: Path
    log_dir: Path
    base_port: int
    nodes: int = amqp_topology.NODES
    host: str = amqp_topology.HOST

    @classmethod
    def from_settings(
        cls, settings: Settings, *, base_port: int | None = None, nodes: int = amqp_topology.NODES
    ) -> RabbitCluster:
        """Next to the stack: ``<state_dir>/rabbitmq``; ports from ``amqp_topology.base_port`` (what the bridge
        derives too): ``LARDER_RABBITMQ_BASE_PORT`` or the stack's MQTT port + 10,000."""
        if base_port is None:
            base_port = amqp_topology.base_port(settings)
        if not (base_port > 1024 and base_port + 10 * nodes + 10 < 55_535):
            raise StackError(f"RabbitMQ base port {base_port} leaves no room for {nodes} nodes below 55,535")
        return cls(settings.state_dir / "rabbitmq", settings.log_dir, base_port, nodes)

    # ports: amqp_topology's layout (10 a node); the CLI tools take distribution ports 10,000 above the node's
    # (RabbitMQ's rule), hence the 55,535 cap.
    def amqp_port(self, n: int) -> int:
        return amqp_topology.amqp_port(self.base_port, n)

    def mqtt_port(self, n: int) -> int:
        return amqp_topology.mqtt_port(self.base_port, n)

    def dist_port(self, n: int) -> int:
        return amqp_topology.dist_port(self.base_port, n)

    @property
    def epmd_port(self) -> int:
        return self.base_port + 10 * self.nodes + 9

    def node_name(self, n: int) -> str:
        return f"larder-mq{n}@localhost"

    def node_dir(self, n: int) -> Path:
        return self.root / f"node{n}"

    def log(self, n: int) -> Path:
        return self.log_dir / f"rabbitmq-node{n}.log"

    def pid_file(self, n: int) -> Path:
        """Written by the Erlang VM itself: the broker's own pid (what ``kill -9`` must hit)."""
        return self.node_dir(n) / "beam.pid"

    def launcher_pid_file(self, n: int) -> Path:
        """The ``rabbitmq-server`` shell that runs the VM; its process group is what ``stop`` ends."""
        return self.node_dir(n) / "launcher.pid"

    def amqp_url(self, n: int, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@{self.host}:{self.amqp_port(n)}/{VHOST}"

    def env(self, n: int) -> dict[str, str]:
        d = self.node_dir(n)
        return {
            # The cookie is read from $HOME/.erlang.cookie by the nodes and by the CLI tools alike.
            "HOME": str(self.root),
            "RABBITMQ_NODENAME": self.node_name(n),
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port(n)),
            "RABBITMQ_DIST_PORT": str(self.dist_port(n)),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_LOGS": "-",  # the console; start_daemon sends it to log(n)
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file(n)),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),  # not Debian's /etc one
            # Erlang schedulers spin while idle by default: three VMs on a shared 2-core machine would burn CPU
            # the other services need. The distribution port (cluster traffic, full control of the node to
            # anyone with the cookie) listens on every interface unless told otherwise: loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"+sbwt none +sbwtdcpu none +sbwtdio none {_LOOPBACK_DIST}",
            "RABBITMQ_CTL_ERL_ARGS": _LOOPBACK_DIST,
        }


def render_conf(c: RabbitCluster, n: int) -> str:
    return f"""# Generated by larder (pipeline/stack/rabbitmq.py); edits are overwritten.
listeners.tcp.1 = {c.host}:{c.amqp_port(n)}
mqtt.listeners.tcp.1 = {c.host}:{c.mqtt_port(n)}
mqtt.allow_anonymous = false
mqtt.vhost = {VHOST}
mqtt.exchange = {EXCHANGE}
# Nagle's algorithm delays PUBACKs in a burst (measured on Mosquitto: median 44 ms); off, as there.
mqtt.tcp_listen_options.nodelay = true
loopback_users = none
# A good neighbour on a shared machine: flow control starts at 1 GB of memory per node.
vm_memory_high_watermark.absolute = 1GB
disk_free_limit.absolute = 200MB
log.console = true
log.console.level = info
log.file = false
"""


# -- install ----------------------------------------------------------------------------------------------------


def installed() -> bool:
    return (SBIN / "rabbitmq-server").exists() and (SBIN / "rabbitmqctl").exists()


def install(settings: Settings) -> bool:
    """``apt-get install rabbitmq-server`` when missing (Debian 12: 3.10.8 with Erlang 25). Returns True if it
    installed. Debian's package would start its own broker where systemd or an init policy allows it; that one
    is not ours and is stopped."""
    if installed():
        return False
    log = settings.log_dir / "install-rabbitmq.log"
    sudo = apt_install(
        ["rabbitmq-server"],
        log,
        without_apt="rabbitmq-server is not installed and apt-get is not available: install rabbitmq-server 3.10",
    )
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        run([*sudo, "systemctl", "disable", "--now", "rabbitmq-server"], log_file=log, what="stop packaged broker")
    if not installed():
        raise StackError(f"rabbitmq-server installed but {SBIN}/rabbitmq-server is missing; see {log}")
    return True


# -- the CLI ----------------------------------------------------------------------------------------------------


def ctl(c: RabbitCluster, n: int, *args: str, tool: str = "rabbitmqctl", timeout: float = 120) -> str:
    """Run a RabbitMQ CLI tool against node ``n``; returns its output, raises with it on failure."""
    argv = [str(SBIN / tool), "-n", c.node_name(n), *args]
    r = subprocess.run(
        argv,
        env={**os.environ, **c.env(n)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise StackError(f"{' '.join(argv[1:])} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def _cookie(c: RabbitCluster) -> None:
    path = c.root / ".erlang.cookie"
    if path.exists():
        return
    c.root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".cookie.tmp")
    tmp.write_text(secrets.token_hex(20).upper())
    tmp.chmod(0o400)  # Erlang refuses a cookie others can read
    tmp.replace(path)


def _prepare(c: RabbitCluster, n: int) -> None:
    d = c.node_dir(n)
    for sub in (d, d / "mnesia", d / "log", c.log_dir):
        sub.mkdir(parents=True, exist_ok=True)
    (c.root / "rabbitmq-env.conf").touch()
    (d / "rabbitmq.conf").write_text(render_conf(c, n))
    (d / "advanced.config").write_text("[].\n")
    plugins = d / "enabled_plugins"
    if not plugins.exists() or "rabbitmq_mqtt" not in plugins.read_text():
        ctl(c, n, "--offline", "enable", "rabbitmq_mqtt", tool="rabbitmq-plugins")


def node_up(c: RabbitCluster, n: int) -> bool:
    return port_open(c.host, c.mqtt_port(n)) and port_open(c.host, c.amqp_port(n))


def beam_pid(c: RabbitCluster, n: int) -> int | None:
    return read_pid(c.pid_file(n))


def start_node(c: RabbitCluster, n: int) -> int:
    """Start node ``n`` (its data folder kept: a restarted node rejoins the cluster and its queue replicas)."""
    _cookie(c)
    _prepare(c, n)
    c.pid_file(n).unlink(missing_ok=True)
    return start_daemon(
        [SBIN / "rabbitmq-server"],
        pid_file=c.launcher_pid_file(n),
        log_file=c.log(n),
        env=c.env(n),
        cwd=c.node_dir(n),
    )


def wait_node(c: RabbitCluster, n: int, timeout: float = 300) -> None:
    # A node restarted into an existing cluster opens its listeners only after the MQTT plugin's client-id
    # tracker (a Raft cluster) has a leader: 95 s and more were seen here on a loaded machine.
    launcher = read_pid(c.launcher_pid_file(n))

    def ready() -> bool:
        if launcher is not None and not pid_alive(launcher):
            raise StackError(f"RabbitMQ node {n} exited while starting:\n{tail(c.log(n), 30)}")
        return node_up(c, n)

    if not wait_until(ready, timeout=timeout, interval=0.5):
        raise StackError(f"RabbitMQ node {n} did not open its ports in {timeout:g} s:\n{tail(c.log(n), 30)}")


def running_nodes(c: RabbitCluster, n: int = 1) -> list[str]:
    out = ctl(c, n, "cluster_status", "--formatter", "json")
    return list(json.loads(out).get("running_nodes", []))


def _join(c: RabbitCluster, n: int) -> None:
    """Make a fresh node ``n`` a member of node 1's cluster (no-op if it already is)."""
    status = json.loads(ctl(c, n, "cluster_status", "--formatter", "json"))
    if c.node_name(1) in status.get("disk_nodes", []):
        return
    ctl(c, n, "stop_app")
    ctl(c, n, "join_cluster", c.node_name(1))
    ctl(c, n, "start_app")


def up(c: RabbitCluster, report: Callable[[str], None] = print) -> None:
    """Start every node that is not answering, join fresh ones to node 1, wait until all run in one cluster."""
    t0 = time.monotonic()
    if not node_up(c, 1):
        report(f"rabbitmq: node 1 started (pid {start_node(c, 1)}), log {c.log(1)}")
        wait_node(c, 1)
    others = [n for n in range(2, c.nodes + 1) if not node_up(c, n)]
    for n in others:
        report(f"rabbitmq: node {n} started (pid {start_node(c, n)}), log {c.log(n)}")
    for n in others:
        wait_node(c, n)
    for n in range(2, c.nodes + 1):
        _join(c, n)
    want = {c.node_name(n) for n in range(1, c.nodes + 1)}
    if not wait_until(lambda: set(running_nodes(c)) >= want, timeout=60, interval=1.0):
        raise StackError(f"RabbitMQ cluster has {running_nodes(c)}, want {sorted(want)}")
    report(f"rabbitmq: {c.nodes} nodes in one cluster in {time.monotonic() - t0:.1f} s")


def kill9(c: RabbitCluster, n: int) -> int:
    """``kill -9`` node ``n``'s Erlang VM (a crash: no clean shutdown, nothing flushed). Returns its pid."""
    pid = beam_pid(c, n)
    if pid is None:
        raise StackError(f"RabbitMQ node {n} has no pid file ({c.pid_file(n)})")
    os.kill(pid, signal.SIGKILL)
    return pid


def down(c: RabbitCluster, report: Callable[[str], None] = print) -> None:
    """Stop every node (SIGTERM to its process group: RabbitMQ shuts down cleanly), then the cluster's epmd."""
    for n in range(c.nodes, 0, -1):
        pid = read_pid(c.launcher_pid_file(n))
        if pid is None:
            continue
        stop_pid(pid, timeout=30)
        beam = beam_pid(c, n)
        if beam is not None:  # the VM outlived its launcher (kill -9 of the launcher): end it by its own pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(beam, signal.SIGKILL)
        c.launcher_pid_file(n).unlink(missing_ok=True)
        report(f"rabbitmq: node {n} stopped")
    epmd = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    if epmd:
        subprocess.run([str(epmd), "-port", str(c.epmd_port), "-kill"], capture_output=True, check=False, timeout=10)


def destroy(c: RabbitCluster) -> None:
    """Delete the cluster's files (nodes must be down): the next ``up`` forms a new cluster."""
    shutil.rmtree(c.root, ignore_errors=True)


# -- definitions: vhost, queue, binding, users ------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt + password)), 4-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(devices: Mapping[str, str], bridge_user: str, bridge_password: str) -> dict[str, object]:
    """The ``import_definitions`` document for the MQTT tier (see the module docstring)."""
    users = [(bridge_user, bridge_password), *devices.items()]
    for device in devices:
        if device == bridge_user:
            raise StackError(f"device id {device!r} collides with the bridge's user")

    def user(name: str, pw: str) -> dict[str, object]:
        return {
            "name": name,
            "password_hash": hash_password(pw),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }

    nothing = "^$"
    permissions = [
        {"user": bridge_user, "vhost": VHOST, "configure": nothing, "write": nothing, "read": f"^{re.escape(QUEUE)}$"}
    ]
    # A device may only publish to amq.topic (configure: nothing, so it cannot declare queues or subscribe).
    permissions += [
        {"user": d, "vhost": VHOST, "configure": nothing, "write": f"^{re.escape(EXCHANGE)}$", "read": nothing}
        for d in devices
    ]
    topic_permissions = [
        {"user": d, "vhost": VHOST, "exchange": EXCHANGE, "write": f"^{re.escape(routing_key(d))}$", "read": nothing}
        for d in devices
    ]
    return {
        "rabbit_version": "3.10.8",
        "vhosts": [{"name": VHOST}],
        "users": [user(n, p) for n, p in users],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "queues": [
            {
                "name": QUEUE,
                "vhost": VHOST,
                "durable": True,
                "auto_delete": False,
                # Replicated on every node (Raft): a publish is confirmed, and so PUBACKed, once a majority
                # has written it to its log.
                "arguments": {"x-queue-type": "quorum", "x-quorum-initial-group-size": 3},
            }
        ],
        "exchanges": [],
        "bindings": [
            {
                "source": EXCHANGE,
                "vhost": VHOST,
                "destination": QUEUE,
                "destination_type": "queue",
                "routing_key": BINDING,
                "arguments": {},
            }
        ],
    }


def configure(c: RabbitCluster, devices: Mapping[str, str], bridge_user: str, bridge_password: str) -> None:
    """Apply the definitions through node 1 (one CLI call for any number of devices) and delete ``guest``.
    Re-running it updates passwords and permissions; it removes nobody (``rabbitmqctl delete_user`` does)."""
    path = c.root / "definitions.json"
    tmp = path.with_name(".definitions.tmp")
    tmp.write_text(json.dumps(definitions(devices, bridge_user, bridge_password)))
    tmp.chmod(0o600)  # password hashes
    tmp.replace(path)
    ctl(c, 1, "import_definitions", str(path))
    with contextlib.suppress(StackError):
        ctl(c, 1, "delete_user", "guest")


def queue_leader(c: RabbitCluster, n: int = 1) -> str:
    """The node that leads the readings queue's Raft group (the replica a kill hurts most)."""
    out = ctl(c, n, "list_queues", "-p", VHOST, "name", "leader", "--formatter", "json")
    for q in json.loads(out):
        if q.get("name") == QUEUE:
            return str(q.get("leader"))
    raise StackError(f"queue {QUEUE} not found on the cluster")


def queue_messages(c: RabbitCluster, n: int = 1) -> int:
    out = ctl(c, n, "list_queues", "-p", VHOST, "name", "messages", "--formatter", "json")
    return next((int(q.get("messages", 0)) for q in json.loads(out) if q.get("name") == QUEUE), 0)
