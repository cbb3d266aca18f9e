"""Start-up checks of every entry point: say what is wrong in one line, before the first request.

Why: without them, a bad setting was a traceback, an unreachable Redis a flood of retry lines
(or nothing until the first request), and `ENQUEUE_FSYNC=true` on a Redis that cannot fsync a
503 on every enqueue, and a console without ADMIN_KEYS an admin API open to anyone. Here:

- `settings_or_exit()`: a bad setting exits with one line naming the variable, the value and
  what is expected (exit code `EXIT_REFUSED`);
- `check()`: an unreachable Redis is logged in one line naming the URL (password masked) and the
  error within `REACH_TIMEOUT_S`, and the service goes on starting (the functions answer 503 until
  Redis is back, the worker retries); `ENQUEUE_FSYNC=true` against a Redis without `WAITAOF`
  (before 7.2) or without an append-only file refuses to start; the enqueue function warns when
  `STATUS_BASE_URL` is unset;
- the console refuses to start without ADMIN_KEYS (or ADMIN_KEYS_FILE) unless
  CONSOLE_READ_ONLY=true, and then warns that its read views are open.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import NoReturn

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskbus.errors import ConfigError
from taskbus.settings import Settings, mask_url
from taskbus.state.client import seed_url

log = logging.getLogger(__name__)

# gunicorn's WORKER_BOOT_ERROR: a function module that refuses inside a gunicorn worker halts the
# server instead of being respawned forever; the CLIs use the same code.
EXIT_REFUSED = 3
REACH_TIMEOUT_S = 4.0  # the whole reachability check, DNS included: said within 5 s
# Set by `taskbus serve` for the gunicorn it becomes: Redis was checked (and said) once, before
# gunicorn's slow imports, so its workers do not check it again each.
CHECKED_ENV = "TASKBUS_PREFLIGHT_DONE"
_CLIENT_TIMEOUT_S = 1.5


def refuse(message: str) -> NoReturn:
    """Print `message` as the one line on stderr and exit (no traceback)."""
    print(f"taskbus: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_REFUSED)


def settings_or_exit(env: Mapping[str, str] | None = None) -> Settings:
    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        refuse(str(exc))


def may_refuse(settings: Settings, role: str) -> bool:
    """Whether `check` could refuse to start `role` (else it only warns)."""
    return (role == "enqueue" and settings.enqueue_fsync) or (role == "console" and _console_open(settings))


def _console_open(settings: Settings) -> bool:
    return not settings.admin_keys and not settings.console_read_only


def check(settings: Settings, role: str, *, warn: bool = True, redis_checked: bool = False) -> None:
    """Run the start-up checks of `role` (`enqueue`, `status`, `console` or `worker`). Refuses
    (exits) only on a Redis that cannot do what the settings ask, or a console without keys that
    is not read-only. `taskbus serve` checks Redis before gunicorn with `warn=False` (warnings are
    said by gunicorn's workers) and its workers then pass `redis_checked=True`."""
    if role == "console" and _console_open(settings):
        refuse("the console needs ADMIN_KEYS (or ADMIN_KEYS_FILE) of label:key entries, or CONSOLE_READ_ONLY=true "
               "to serve only its read views")
    if not redis_checked:
        _check_redis(settings, role)  # first: a refusal is then the only line
    if role == "console" and not settings.admin_keys and warn:
        log.warning("ADMIN_KEYS is not set: this read-only console shows every queue and task to anyone who can "
                    "reach it")
    if role == "enqueue" and not settings.status_base_url and warn:
        log.warning(
            "STATUS_BASE_URL is not set: status_url and Location are relative (/tasks/<id>), which leads "
            "nowhere when the status function is deployed apart from this one; set it to the status "
            "function's base URL"
        )


def _check_redis(settings: Settings, role: str) -> None:
    url = mask_url(settings.redis_url)
    client = redis.Redis.from_url(
        seed_url(settings),  # on a cluster, its first seed node
        socket_connect_timeout=min(settings.redis_connect_timeout_s, _CLIENT_TIMEOUT_S),
        socket_timeout=min(settings.redis_socket_timeout_s, _CLIENT_TIMEOUT_S),
        retry=Retry(NoBackoff(), 0),  # one try: the service's own clients retry later
        protocol=2,
        decode_responses=True,
    )
    try:
        failure = _within(REACH_TIMEOUT_S, client.ping)
        if failure is not None:
            log.error(f"Redis at {url} is unreachable: {failure}", extra={"fields": {"redis_url": url}})
            return
        if may_refuse(settings, role):
            failure = _within(REACH_TIMEOUT_S, lambda: _fsync_refusal(client, url))
            if isinstance(failure, _Refusal):
                refuse(str(failure))
            if failure is not None:  # Redis went away meanwhile: the enqueue says it per request
                log.error(f"could not check WAITAOF on Redis at {url}: {failure}")
    finally:
        client.close()


def _fsync_refusal(client: redis.Redis, url: str) -> None:
    """Raise `_Refusal` unless WAITAOF works: a fresh connection has written nothing, so it
    answers at once, or says the command is unknown (Redis < 7.2) or AOF is off."""
    try:
        client.execute_command("WAITAOF", 1, 0, 1)  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        text = str(exc).rstrip(".")
        if "unknown command" in text.lower():
            version = _version(client)
            raise _Refusal(
                f"ENQUEUE_FSYNC=true needs WAITAOF (Redis or Valkey >= 7.2), but Redis at {url} "
                f"({version}) does not know it: {text}; upgrade Redis or set ENQUEUE_FSYNC=false"
            ) from None
        if "appendonly" in text.lower():
            raise _Refusal(
                f"ENQUEUE_FSYNC=true needs Redis's append-only file, but Redis at {url} runs with "
                f"appendonly no: {text}; start it with --appendonly yes or set ENQUEUE_FSYNC=false"
            ) from None
        raise


class _Refusal(Exception):
    """A reason to refuse to start, carried out of the checking thread."""


def _version(client: redis.Redis) -> str:
    try:
        info = client.info("server")
    except redis.RedisError:
        return "version unknown"
    name = "Valkey" if info.get("server_name") == "valkey" else "Redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version', '?')}"


def _within(timeout_s: float, call: Callable[[], object]) -> _Refusal | str | None:
    """Run `call` on a daemon thread for at most `timeout_s` (a DNS lookup is bounded by no socket
    timeout). None if it succeeded; the `_Refusal` it raised; else what went wrong, in a few words."""
    outcome: list[_Refusal | str | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except _Refusal as exc:
            outcome.append(exc)
        except (redis.RedisError, OSError, ValueError) as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="taskbus-preflight", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"
