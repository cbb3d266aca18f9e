"""`make up`: the whole stack on one machine, started in order and stopped in reverse.

Start: take the run directory's lock (a second stack on it refuses in one line), check every
port it will bind, start the embedded Valkey (unless REDIS_URL is set) on the fixed
LOCAL_REDIS_PORT and wait for PING, the embedded Kafka broker likewise (CHANNEL=kafka), then
the three functions (the console with an admin key generated into the run directory, unless
ADMIN_KEYS or ADMIN_KEYS_FILE is set) and a worker; print `ready` once all of them answer
(`local.ready`), or give up naming the cause.

Stop (Ctrl-C, SIGTERM, or a service dying): the functions first, so nothing new comes in; then
the worker, which finishes its in-flight tasks for up to GRACE_S and records their outcomes;
then the servers, which thus outlive every client. A second Ctrl-C kills what is left, but
still stops Valkey cleanly.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from local import admin_key, ready, webhook_samples
from local.cluster import EmbeddedCluster
from local.commands import argv
from local.embedded import EmbeddedKafka, EmbeddedServer
from local.rundir import AlreadyRunning, RunDir, Stack
from local.supervisor import Service, Supervisor
from taskbus.errors import ConfigError
from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_PORT = 6399  # next to Redis's 6379, so a developer's own Redis keeps its port
# Not 9092: that is where a developer's own Kafka listens; 19092 is the usual "second Kafka on
# this machine" port (the host-side listener of many compose files).
DEFAULT_KAFKA_PORT = 19092
SERVER_START_S = 20.0  # an embedded server binds in well under a second; a cold disk may be slow
REDIS_REACH_S = 5.0  # how long a REDIS_URL of the user's may take to answer before we give up
READY_S = 60.0
FUNCTION_STOP_S = 12.0  # above gunicorn's --graceful-timeout (8 s, local.commands)
CLUSTER_NODES = 6  # LOCAL_CLUSTER: 3 masters + 3 replicas on LOCAL_REDIS_PORT.. (+10000: their bus ports)
STOP_ORDER = (("enqueue", "status", "console"), ("worker",),
              ("kafka", "valkey", *(f"valkey-{i}" for i in range(CLUSTER_NODES))))
FUNCTIONS = ("enqueue", "status", "console")


class GiveUp(Exception):
    """The stack cannot start; the message is the one line that says why."""


class Stopped(Exception):
    """Ctrl-C (or SIGTERM) before the stack was ready: a stop asked for, not a failure."""


def run_dir(env: Mapping[str, str]) -> Path:
    """LOCAL_RUN_DIR, absolute: the servers run from the checkout, not from the caller's directory."""
    return Path(env.get("LOCAL_RUN_DIR") or ROOT / ".run").resolve()


def up(environ: Mapping[str, str]) -> int:
    """Run the stack until Ctrl-C; the exit code is 0 after a clean stop asked for by a signal."""
    run = RunDir(run_dir(environ))
    try:
        run.lock()
    except AlreadyRunning as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    try:
        return _up(environ, run)
    finally:
        run.release()


def _up(environ: Mapping[str, str], run: RunDir) -> int:
    try:
        plan = Plan(environ, run.path)
    except ConfigError as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 2
    except GiveUp as exc:
        print(f"make up: {exc}", file=sys.stderr)
        return 1
    run.write_stack(plan.stack())
    supervisor = Supervisor()
    stopping, force = threading.Event(), threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        (force if stopping.is_set() else stopping).set()  # only events: the main thread does the rest
        supervisor.changed.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    cause: str | None = None
    try:
        plan.start(supervisor, stopping)
        supervisor.say(ready.banner(plan.enqueue_url, plan.status_url, plan.redis_url, plan.kafka))
        supervisor.say(ready.console_banner(plan.console_url, plan.env.get("ADMIN_KEYS_FILE")))
        warning = ready.data_lost_warning(plan.redis_url, plan.settings.key_prefix, plan.settings.queues)
        if warning:
            supervisor.say(warning)
        cause = _watch(supervisor, stopping)
    except GiveUp as exc:
        cause = str(exc)
    except Stopped:
        pass
    except BaseException:
        supervisor.kill_all()
        raise
    if stopping.is_set() and cause is None:
        supervisor.say(f"{received[0] if received else 'stop'} received: stopping the functions, then the worker "
                       "(it finishes its tasks; Ctrl-C again to kill it), then the servers")
    clean = supervisor.stop(STOP_ORDER, force)
    if cause is not None:
        print(f"make up: {cause}", file=sys.stderr, flush=True)
        return 1
    return 0 if clean else 1


def _watch(supervisor: Supervisor, stopping: threading.Event) -> str | None:
    """Wait for Ctrl-C (None) or a service's death (its cause)."""
    while not stopping.is_set():
        supervisor.changed.wait()
        supervisor.changed.clear()
        dead = supervisor.exited()
        if dead is not None and not stopping.is_set():
            return f"{dead.name} exited with code {dead.popen.returncode}: {ready.last_error_line(dead.lines)}"
    return None


class Plan:
    """What this stack runs, decided before anything starts."""

    def __init__(self, environ: Mapping[str, str], run: Path) -> None:
        env = dict(environ)
        env.pop("PORT", None)  # one function per container (Cloud Run); here each has its own port
        if not env.get("WEBHOOK_SOURCES"):
            env.update(webhook_samples.dev_env(run))
        env.update(admin_key.dev_env(run, env))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # their lines reach the terminal as they are written
        self.valkey: EmbeddedServer | None = None
        self.cluster: EmbeddedCluster | None = None
        self.broker: EmbeddedKafka | None = None
        ports: list[tuple[str, str, int]] = []  # (the variable that moves it, host, port)
        if not env.get("REDIS_URL"):
            ports += self._embedded_redis(env, run)
        if env.get("CHANNEL") == "kafka" and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
            # tansu, in memory: topics last as long as the stack (KAFKA_REDELIVER_S covers a restart)
            self.broker = EmbeddedKafka(run / "kafka", port=_port(env, "LOCAL_KAFKA_PORT", DEFAULT_KAFKA_PORT))
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.broker.bootstrap
            env.setdefault("KAFKA_REPLICATION_FACTOR", "1")
            ports.append(("LOCAL_KAFKA_PORT", "127.0.0.1", self.broker.port))
        settings = Settings.from_env(env)
        self.enqueue_url = f"http://{_client_host(settings.host)}:{settings.enqueue_port}"
        self.status_url = f"http://{_client_host(settings.host)}:{settings.status_port}"
        self.console_url = f"http://{_client_host(settings.host)}:{settings.console_port}"
        env.setdefault("STATUS_BASE_URL", self.status_url)
        ports += [("ENQUEUE_PORT", settings.host, settings.enqueue_port),
                  ("STATUS_PORT", settings.host, settings.status_port),
                  ("CONSOLE_PORT", settings.host, settings.console_port)]
        for variable, host, port in ports:
            _check_free(host, port, variable)
        self.env = env
        self.settings = Settings.from_env(env)
        self.redis_url = env["REDIS_URL"]
        self.kafka = env.get("KAFKA_BOOTSTRAP_SERVERS") if self.settings.channel == "kafka" else None
        self.pid = os.getpid()

    def _embedded_redis(self, env: dict[str, str], run: Path) -> list[tuple[str, str, int]]:
        """The embedded Valkey, or with LOCAL_CLUSTER=true (or REDIS_CLUSTER=true) a 3 + 3 cluster
        of it; sets REDIS_URL (and REDIS_CLUSTER). Returns the ports it will bind."""
        port = _port(env, "LOCAL_REDIS_PORT", DEFAULT_REDIS_PORT)
        if (env.get("LOCAL_CLUSTER") or env.get("REDIS_CLUSTER") or "").lower() not in ("1", "true", "yes", "on"):
            self.valkey = EmbeddedServer(run / "valkey", port=port)
            env["REDIS_URL"] = self.valkey.url
            return [("LOCAL_REDIS_PORT", "127.0.0.1", self.valkey.port)]
        if port + CLUSTER_NODES + 10000 > 65535:
            raise GiveUp(f"LOCAL_REDIS_PORT={port}: a cluster needs {CLUSTER_NODES} ports from it and their "
                         "bus ports 10000 above; expected at most 55529")
        self.cluster = EmbeddedCluster(run / "valkey-cluster", ports=[port + i for i in range(CLUSTER_NODES)])
        env["REDIS_URL"], env["REDIS_CLUSTER"] = self.cluster.url, "true"
        return [("LOCAL_REDIS_PORT", "127.0.0.1", p) for n in self.cluster.nodes for p in (n.port, n.bus_port)]

    def stack(self) -> Stack:
        hooks = {s.name: {"scheme": s.scheme, "secret": s.secrets[0]} for s in self.settings.webhooks}
        return Stack(self.pid, self.enqueue_url, self.status_url, hooks)

    def start(self, supervisor: Supervisor, stopping: threading.Event) -> None:
        """Start everything in order; return once all of it answers, else raise `GiveUp`."""
        if self.valkey is not None:
            self.valkey.data_dir.mkdir(parents=True, exist_ok=True)
            supervisor.start(Service("valkey", self.valkey.argv(), self.env, ROOT))
        if self.cluster is not None:
            for i, node in enumerate(self.cluster.nodes):
                node.data_dir.mkdir(parents=True, exist_ok=True)
                supervisor.start(Service(f"valkey-{i}", node.argv(), self.env, ROOT))
            try:
                self.cluster.form(SERVER_START_S)  # a second `make up` finds it formed (nodes.conf)
            except RuntimeError as exc:
                raise GiveUp(str(exc)) from None
        _wait(supervisor, stopping, SERVER_START_S if self.valkey or self.cluster else REDIS_REACH_S,
              lambda: [p] if (p := ready.redis_problem(self.redis_url)) else [])
        broker = self.broker
        if broker is not None:  # tansu does not stop promptly on SIGTERM; it keeps nothing to flush
            supervisor.start(Service("kafka", broker.argv(), self.env, ROOT, stop_signal=signal.SIGKILL))
            _wait(supervisor, stopping, SERVER_START_S,
                  lambda: [] if _answers(broker.port) else [f"Kafka broker at {broker.bootstrap} does not answer"])
        grace = self.settings.grace_s + 10  # the drain, then handing back what is left and closing
        for name in (*FUNCTIONS, "worker"):
            timeout = grace if name == "worker" else FUNCTION_STOP_S
            supervisor.start(Service(name, argv(name, self.settings), self.env, ROOT, stop_timeout_s=timeout))
        children = supervisor.children

        def problems() -> list[str]:
            found = [p for p in (ready.health_problem("enqueue", self.enqueue_url),
                                 ready.health_problem("status", self.status_url),
                                 ready.health_problem("console", self.console_url)) if p]
            if not children["worker"].has_said(ready.WORKER_UP):
                found.append(f"the worker has not logged {ready.WORKER_UP!r} yet")
            return found

        _wait(supervisor, stopping, READY_S, problems)


def _wait(supervisor: Supervisor, stopping: threading.Event, timeout_s: float,
          problems: Callable[[], list[str]]) -> None:
    """Until `problems()` is empty. Gives up at once when a service exits (naming its last
    error line) or a stop is asked for, and at the timeout with what is still wrong."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = problems()
        if not found:
            return
        if stopping.is_set():
            raise Stopped()
        dead = supervisor.exited()
        if dead is not None:
            raise GiveUp(f"{dead.name} exited with code {dead.popen.returncode}: {ready.last_error_line(dead.lines)}")
        if time.monotonic() > deadline:
            raise GiveUp(f"not ready after {timeout_s:g} s: " + "; ".join(found))
        supervisor.changed.wait(0.1)  # the interval between probes of other processes; a death or Ctrl-C cuts it
        supervisor.changed.clear()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise GiveUp(f"{name}={raw!r}: expected a port number 1-65535")
    return int(raw)


def _check_free(host: str, port: int, variable: str) -> None:
    """Refuse a port someone else listens on, naming the variable that moves it (gunicorn would
    retry for 5 s and a server exit with a bind error)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise GiveUp(f"port {port} on {host} ({variable}) is not free: {exc.strerror}; "
                         f"stop what uses it or set {variable}") from None


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
