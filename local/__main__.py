"""`python -m local` (`make up`): the embedded server (unless REDIS_URL is set), the enqueue and
status functions under gunicorn, and one worker; logs prefixed by service; Ctrl-C stops all.
With CHANNEL=kafka and no KAFKA_BOOTSTRAP_SERVERS, an embedded Kafka-compatible broker as well.

`python -m local send-webhook <source> [event]` signs a sample delivery with the local
secret and posts it to the running stack."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import honcho.manager

from local import webhook_samples
from local.commands import argv
from local.embedded import EmbeddedKafka, EmbeddedServer
from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RUN = Path(os.environ.get("LOCAL_RUN_DIR") or ROOT / ".run")  # data of the embedded servers, dev webhook secrets


def main() -> int:
    if sys.argv[1:2] == ["send-webhook"]:
        return send_webhook(sys.argv[2:])
    return up()


def send_webhook(args: list[str]) -> int:
    if not 1 <= len(args) <= 2:
        raise SystemExit(f"usage: python -m local send-webhook <{'|'.join(webhook_samples.SOURCES)}> [event]")
    env = {**webhook_samples.dev_env(RUN), **os.environ}
    settings = Settings.from_env(env)
    secret = env.get(f"WEBHOOK_{args[0].upper()}_SECRET", "").split(",")[0]
    code, body = webhook_samples.send(
        f"http://{settings.host}:{settings.enqueue_port}", args[0], args[1] if len(args) == 2 else None, secret
    )
    print(code, body)
    return 0 if code < 300 else 1


def up() -> int:
    env = dict(os.environ)
    if not env.get("WEBHOOK_SOURCES"):
        env.update(webhook_samples.dev_env(RUN))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    broker = None
    if env.get("CHANNEL") == "kafka" and not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        broker = EmbeddedKafka(RUN / "kafka")  # tansu, in memory: topics last as long as the stack
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        env.setdefault("KAFKA_REPLICATION_FACTOR", "1")
    settings = Settings.from_env(env)
    env.setdefault("STATUS_BASE_URL", f"http://{settings.host}:{settings.status_port}")
    manager = honcho.manager.Manager()
    honcho.manager.KILL_WAIT = int(settings.grace_s) + 2  # let the worker drain before SIGKILL
    if not env.get("REDIS_URL"):
        server = EmbeddedServer(RUN / "valkey")
        server.data_dir.mkdir(parents=True, exist_ok=True)
        env["REDIS_URL"] = server.url
        manager.add_process("valkey", "exec " + shlex.join(server.argv()), env=env, cwd=str(ROOT))
    if broker is not None:
        manager.add_process("kafka", "exec " + shlex.join(broker.argv()), env=env, cwd=str(ROOT))
    settings = Settings.from_env(env)
    for name in ("enqueue", "status", "worker"):
        manager.add_process(name, "exec " + shlex.join(argv(name, settings)), env=env, cwd=str(ROOT))
    manager.add_process("ready", shlex.join([sys.executable, "-m", "local.ready"]), env=env, cwd=str(ROOT))
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
