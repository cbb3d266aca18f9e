"""How the console shows a task: a listing row, the full detail (history, audit), a worker."""

from __future__ import annotations

from typing import Any

from taskbus import codec
from taskbus.admin.stats import live_workers
from taskbus.task import TERMINAL, iso


def row(record: dict[str, str]) -> dict[str, Any]:
    """A listing's view of a (possibly partial) task record: no payload, no result."""
    return {
        "id": record.get("id"),
        "type": record.get("type"),
        "queue": record.get("queue"),
        "status": record.get("status"),
        "attempts": as_int(record.get("attempts")),
        "max_attempts": as_int(record.get("max_attempts")),
        "created_at": iso(record.get("created_ms")),
        "started_at": iso(record.get("started_ms")),
        "finished_at": iso(record.get("finished_ms")),
        "error": as_json(record.get("error")),
        "cancel_requested_at": iso(record.get("cancel_requested_ms")),
    }


def detail(record: dict[str, str]) -> dict[str, Any]:
    """Everything the status function shows, and the payload, the attempt history, the audit
    trail and the dead-letter entry."""
    out = row(record)
    out["result"] = as_json(record.get("result"))
    out["payload"] = as_json(record.get("payload"))
    out["worker"] = record.get("consumer")
    out["history"] = history(record)
    out["audit"] = [
        {"at": iso(str(a.get("at_ms"))), "actor": a.get("actor"), "action": a.get("action"), "detail": a.get("detail")}
        for a in as_json(record.get("audit")) or []
    ]
    entry = record.get("dead_entry")
    out["dead_letter"] = {"entry": entry, "at": iso(entry.split("-")[0])} if entry else None
    return out


def history(record: dict[str, str]) -> list[dict[str, Any]]:
    """The attempts oldest first: those kept in `attempt:<n>` fields (retried, lost, and each
    series' last), then the one the task's own fields describe (running now, or the last)."""
    kept: dict[int, dict[str, Any]] = {}
    for field, raw in record.items():
        if field.startswith("attempt:") and field[8:].isdigit():
            a = as_json(raw) or {}
            kept[int(field[8:])] = {
                "attempt": int(field[8:]), "worker": a.get("worker"), "started_at": _iso(a.get("started_ms")),
                "finished_at": _iso(a.get("finished_ms")), "outcome": a.get("outcome"), "error": a.get("error"),
            }
    attempts = as_int(record.get("attempts")) or 0
    status = record.get("status")
    if attempts and record.get("started_ms") and attempts not in kept and status in TERMINAL | {"running"}:
        kept[attempts] = {
            "attempt": attempts, "worker": record.get("consumer"), "started_at": iso(record.get("started_ms")),
            "finished_at": iso(record.get("finished_ms")), "outcome": status,
            "error": as_json(record.get("error")) if status != "succeeded" else None,
        }
    return [kept[n] for n in sorted(kept)]


def workers_of(hashes: list[dict[str, str]], since_ms: int) -> list[dict[str, Any]]:
    """The live workers of the queues' workers hashes, one row each (a worker of several queues
    is in each of their hashes)."""
    by_name: dict[str, dict[str, Any]] = {}
    for workers in hashes:
        for w in live_workers(workers, since_ms):
            info = w.get("info") or {}
            handlers = w.get("handlers") or {}
            types = sorted(handlers.get("exact") or {}) + sorted(f"{p}*" for p in handlers.get("prefix") or {})
            by_name[w["consumer"]] = {
                "consumer": w["consumer"], "host": info.get("host"), "pid": info.get("pid"),
                "queues": info.get("queues"), "types": types, "concurrency": info.get("concurrency"),
                "in_flight": info.get("in_flight"), "seen_at": iso(str(w.get("seen_ms"))),
                "started_at": iso(str(info["started_ms"])) if info.get("started_ms") else None,
                "version": info.get("version"),
            }
    return sorted(by_name.values(), key=lambda w: w["consumer"])


def _iso(ms: Any) -> str | None:
    return iso(str(int(ms))) if isinstance(ms, (int, float)) else None


def as_int(raw: str | None) -> int | None:
    """A stored integer field, or None (absent or not a number)."""
    return int(raw) if raw and raw.lstrip("-").isdigit() else None


def as_json(raw: str | None) -> Any:
    """A stored JSON field decoded, None when absent, the raw text when it is not JSON."""
    if not raw:
        return None
    try:
        return codec.loads(raw)
    except ValueError:
        return raw
