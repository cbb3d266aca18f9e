"""When is the local stack ready, and when it is not, why not — in one line.

`make up` prints `ready` only once every service answers: Redis (or Valkey) answers PING,
both functions answer `GET /healthz` with 200, and the worker has logged `worker starting`
(its loop has begun; the functions' /healthz has already proved Redis reachable). Each check
returns `None` when it passes and otherwise the reason, so that giving up names the cause
("Redis at ... refused connections", "enqueue /healthz answered 503 unavailable: ...")
instead of a minute of retries and a generic "did not become healthy".

A `/healthz` of 503 `data_lost` counts as answering: the function is up and reaches Redis,
and the flag (a lost consumer group, kept for an hour) is about data already gone. `make up`
then prints `ready` and, after it, a warning with the command that clears the flag, rather
than refusing to start for an hour.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterable

import redis

from taskbus.keys import Keys

WORKER_UP = "worker starting"  # taskbus.worker.Worker.run logs it as its loop begins


def masked(url: str) -> str:
    """`url` without its password (a REDIS_URL may carry one)."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def redis_problem(url: str) -> str | None:
    """None if Redis at `url` answers PING, else what went wrong, in one line."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
        return None
    except redis.ConnectionError as exc:
        if "refused" in str(exc).lower():
            return f"Redis at {masked(url)} refused connections"
        return f"Redis at {masked(url)} cannot be reached: {_one_line(exc)}"
    except redis.RedisError as exc:  # AUTH required, wrong password, a protected-mode refusal...
        return f"Redis at {masked(url)} answered with an error: {_one_line(exc)}"
    finally:
        client.close()


def health_problem(name: str, base_url: str) -> str | None:
    """None if `GET <base_url>/healthz` answers 200, or 503 `data_lost` (the function is up and
    reaches Redis; the flag is about past data, and `data_lost_warning` says how to clear it);
    else what it answered, in one line."""
    url = base_url + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return None
            return f"{name} {url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        code, message = _error_of(exc.read())
        if code == "data_lost":
            return None
        return f"{name} {url} answered {exc.code} {code}: {message}" if code else f"{name} {url} answered {exc.code}"
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return f"{name} {url} does not answer ({_one_line(reason)})"


def _error_of(body: bytes) -> tuple[str, str]:
    """(code, message) of a taskbus error body, or empty strings."""
    try:
        error = json.loads(body)["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "", ""


def data_lost_warning(redis_url: str, prefix: str, queues: Iterable[str]) -> str | None:
    """If a worker has flagged a lost consumer group on one of `queues`, what that means and
    the exact command that clears the flag (the functions' /healthz answers 503 until then)."""
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5, decode_responses=True)
    try:
        flagged = [(keys.data_lost(q), client.ttl(keys.data_lost(q))) for q in queues
                   if client.exists(keys.data_lost(q))]
    except redis.RedisError:
        return None
    finally:
        client.close()
    if not flagged:
        return None
    left = max(ttl for _, ttl in flagged)
    delete = f"import redis; redis.Redis.from_url('{masked(redis_url)}').delete(*{[k for k, _ in flagged]!r})"
    return (f"warning: /healthz answers 503 data_lost: a worker found a queue's consumer group gone and recreated "
            f"it, so the tasks queued before were lost. The flag expires in {left} s; to clear it now: "
            f'python -c "{delete}"')


_NOISE = re.compile(r"\[INFO\]|^Reason: |Shutting down: Master|Worker exiting")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def last_error_line(lines: Iterable[str]) -> str:
    """The line of a dead service's output that best says why it died: the last exception
    line (a traceback ends with it), else the last error-level log line, else its last line,
    skipping gunicorn's shutdown chatter ("Reason: Worker failed to boot.")."""
    kept = [line.strip() for line in lines if line.strip() and not _NOISE.search(line)]
    for line in reversed(kept):
        if _EXCEPTION.match(line):
            return line
    for line in reversed(kept):
        message = _json_error(line)
        if message:
            return message
        if "[ERROR]" in line or "[CRITICAL]" in line:
            return line
    return kept[-1] if kept else "(no output)"


def _json_error(line: str) -> str | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("severity") not in ("ERROR", "CRITICAL"):
        return None
    detail = record.get("error") or (record.get("exc") or "").strip().splitlines()[-1:]
    detail = detail[0] if isinstance(detail, list) and detail else detail
    return f"{record.get('message')}" + (f": {detail}" if detail else "")


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text[:300]


def banner(enqueue: str, status: str, redis_url: str, kafka: str | None) -> str:
    channel = f", Kafka at {kafka}" if kafka else ""
    return f"""ready: enqueue on {enqueue}, status on {status}, Redis at {masked(redis_url)}{channel}
  curl -s -X POST {enqueue}/tasks -H 'Content-Type: application/json' \\
       -d '{{"type": "echo", "payload": {{"hello": "world"}}}}'
  curl -s '{status}/tasks/<id>?wait=10'
  python -m local send-webhook github push   (a signed sample; also stripe, standard, slack, shopify)
Ctrl-C stops everything: the functions, then the worker (it finishes its tasks), the servers last."""


def console_banner(console: str, key_file: str | None) -> str:
    """Where the console is, and where its admin key is (never the key itself: terminals are logged)."""
    if not key_file:
        return f"console on {console}/ (with the keys of ADMIN_KEYS)"
    curl = f'curl -s {console}/api/queues -H "Authorization: Bearer $(cut -d: -f2- {key_file})"'
    return f"console on {console}/ (the admin key is in {key_file}; the page asks for it once)\n  {curl}"
