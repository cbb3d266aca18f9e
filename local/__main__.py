"""`python -m local` (`make up`): the embedded server (unless REDIS_URL is set), the enqueue and
status functions under gunicorn, and one worker; logs prefixed by service; Ctrl-C stops all."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import honcho.manager

from local.commands import argv
from local.embedded import EmbeddedServer
from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    settings = Settings.from_env(env)
    env.setdefault("STATUS_BASE_URL", f"http://{settings.host}:{settings.status_port}")
    manager = honcho.manager.Manager()
    honcho.manager.KILL_WAIT = int(settings.grace_s) + 2  # let the worker drain before SIGKILL
    if not env.get("REDIS_URL"):
        server = EmbeddedServer(ROOT / ".run" / "valkey")
        server.data_dir.mkdir(parents=True, exist_ok=True)
        env["REDIS_URL"] = server.url
        manager.add_process("valkey", "exec " + shlex.join(server.argv()), env=env, cwd=str(ROOT))
    settings = Settings.from_env(env)
    for name in ("enqueue", "status", "worker"):
        manager.add_process(name, "exec " + shlex.join(argv(name, settings)), env=env, cwd=str(ROOT))
    manager.add_process("ready", shlex.join([sys.executable, "-m", "local.ready"]), env=env, cwd=str(ROOT))
    manager.loop()
    return manager.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
