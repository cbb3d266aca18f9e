"""Section 3b, long-poll capacity: one status instance (`taskbus serve status`, 2 processes)
with `longpoll_clients` concurrent `GET /tasks/<id>?wait=30` clients (one task each) while their
tasks finish at `longpoll_rate` per second.

The tasks finish through a real worker (no-op `echo` handler, CONCURRENCY 8): each is enqueued
with a `delay_s` that makes it due at its own slot, first + k / rate (k a random permutation,
so clients do not finish in the order they connected); the worker promotes and runs it then,
and writes the terminal state itself. The clients are asyncio sockets in this process (one
HTTP/1.1 request each, `Connection: close`), all connected and sent before the first slot.
Wake-up = client receive time − the task's `finished_ms` (Redis TIME, floored to the ms). A
client that gets no answer within wait + CLIENT_MARGIN_S is a timeout; a refused or reset
connection, a non-200 or an answer before the task finished is an error: none can hang the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import urllib.parse
from typing import Any

import psutil

from bench.config import QUEUE, Config
from bench.metrics import Metrics, pct
from bench.procs import Proc, wait_for
from bench.stack import Stack, Store
from taskbus.task import TaskSpec

LEAD_S = 8.0  # from the first enqueue to the first task's slot: enqueue, then connect every client
CLIENT_MARGIN_S = 10.0  # a client gives up this long after its wait would have ended
ENQUEUE_BATCH = 100
OUTCOMES = ("ok", "timeout", "connect_error", "reset", "http_error", "not_finished")


@dataclasses.dataclass
class Answer:
    outcome: str
    received_ms: float = 0.0
    detail: str = ""


def run_longpoll(stack: Stack, cfg: Config, m: Metrics) -> None:
    stack.flush()
    changes = settings_changes(stack, cfg.longpoll_settings)
    if changes:
        m.notes.append(f"long-poll status instance with {changes}")
    status, base, _ = stack.taskbus_function("status", **changes)
    [worker] = stack.taskbus_workers(1, 8)
    store = Store(stack.settings())
    try:
        warm(stack, store, base)
        for rnd in range(cfg.rounds):
            one_round(stack, cfg, m, store, base, status, worker, rnd)
            stack.flush()
    finally:
        store.client.close()
        worker.stop()
        status.stop()


def settings_changes(stack: Stack, raw: dict[str, str]) -> dict[str, Any]:
    """`--longpoll-settings` as typed Settings changes (each value cast to its field's default's type)."""
    base = stack.settings()
    out: dict[str, Any] = {}
    for name, value in raw.items():
        current = getattr(base, name)  # AttributeError: not a Settings field
        out[name] = value.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(value)
    return out


def warm(stack: Stack, store: Store, base: str) -> None:
    """A few tasks through the worker and a few long-polls through each status process."""
    spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
    ids = [store.enqueue(spec)[0] for _ in range(20)]
    answers = asyncio.run(clients(base, ids, 5.0, time.time() + 30))
    bad = [a for a in answers if a.outcome != "ok"]
    if bad:
        raise RuntimeError(f"warm-up long-polls failed: {bad[0].outcome} {bad[0].detail}")
    stack.flush()


def one_round(
    stack: Stack, cfg: Config, m: Metrics, store: Store, base: str, status: Proc, worker: Proc, rnd: int
) -> None:
    n, rate, wait_s = cfg.longpoll_clients, cfg.longpoll_rate, cfg.longpoll_wait_s
    print(
        f"  long-poll round {rnd + 1}/{cfg.rounds}: {n} clients ?wait={wait_s:g}, tasks finishing at {rate:.0f}/s",
        flush=True,
    )
    first = time.time() + LEAD_S
    slots = random.sample(range(n), n)
    ids = enqueue_slotted(store, [first + k / rate for k in slots])
    if time.time() > first - 2:
        m.errors.append(f"long-poll round {rnd + 1}: enqueueing {n} tasks ran into the lead ({LEAD_S} s)")
    sampler = Sampler(status, int(urllib.parse.urlsplit(base).port or 80))
    cpu0 = sampler.cpu()
    answers = asyncio.run(clients(base, ids, wait_s, first, sampler))
    cpu_s = sampler.cpu() - cpu0
    finished = wait_for(lambda: finished_ms(stack, store, ids), 30, f"{n} long-poll tasks to finish", worker, 0.2)
    record(m, cfg, rnd, answers, finished, sampler, cpu_s, first)


def enqueue_slotted(store: Store, due: list[float]) -> list[str]:
    """One echo task per due time (epoch s), by enqueue_many; each `delay_s` from the moment of its call."""
    ids: list[str] = []
    for i in range(0, len(due), ENQUEUE_BATCH):
        now = time.time()
        items = [
            (TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE, delay_s=max(0.0, t - now)), None)
            for t in due[i : i + ENQUEUE_BATCH]
        ]
        ids += [r[0] for r in store.enqueue_many(items)]
    return ids


def finished_ms(stack: Stack, store: Store, ids: list[str]) -> list[int] | None:
    pipe = stack.r.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(store.keys.task(task_id), "status", "finished_ms")
    rows = pipe.execute()
    if any(row[0] != "succeeded" for row in rows):
        return None
    return [int(row[1]) for row in rows]


class Sampler:
    """RSS (and USS) of the status instance's process tree (gunicorn master + its workers)."""

    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.rss_waiting: float | None = None  # bytes, every client sent, just before the first slot
        self.uss_waiting: float | None = None
        self.held: int | None = None  # client connections (on its port) the instance's processes hold then
        self.rss_peak = 0.0

    def rss(self) -> float:
        total = 0.0
        for p in self.proc.tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.rss_peak = max(self.rss_peak, total)
        return total

    def waiting(self) -> None:
        """The readings with every client waiting (taken once, just before the first task finishes)."""
        self.rss_waiting = self.rss()
        uss, held = 0.0, 0
        for p in self.proc.tree():
            try:
                uss += p.memory_full_info().uss
                conns = p.net_connections(kind="tcp")
                held += sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port for c in conns)
            except psutil.Error:
                pass
        self.uss_waiting, self.held = uss, held

    def cpu(self) -> float:
        total = 0.0
        for p in self.proc.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


async def clients(
    base: str, ids: list[str], wait_s: float, first: float, sampler: Sampler | None = None
) -> list[Answer]:
    """One long-poll client per task id, all at once; the sampler reads the instance while they wait."""
    parts = urllib.parse.urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", int(parts.port or 80)
    deadline = time.time() + LEAD_S + wait_s + CLIENT_MARGIN_S
    tasks = [asyncio.ensure_future(one_client(host, port, task_id, wait_s, deadline)) for task_id in ids]
    if sampler is not None:
        await sample(sampler, first, tasks)
    return list(await asyncio.gather(*tasks))


async def sample(sampler: Sampler, first: float, tasks: list[asyncio.Future[Answer]]) -> None:
    await asyncio.sleep(max(0.0, first - 0.5 - time.time()))
    await asyncio.get_running_loop().run_in_executor(None, sampler.waiting)
    while not all(t.done() for t in tasks):
        await asyncio.get_running_loop().run_in_executor(None, sampler.rss)
        await asyncio.sleep(0.25)


async def one_client(host: str, port: int, task_id: str, wait_s: float, deadline: float) -> Answer:
    request = (
        f"GET /tasks/{task_id}?wait={wait_s:g} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        async with asyncio.timeout(max(0.1, deadline - time.time())):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                return Answer("connect_error", detail=str(exc))
            try:
                writer.write(request)
                await writer.drain()
                raw = await reader.read(-1)
            except OSError as exc:
                return Answer("reset", detail=str(exc))
            finally:
                writer.close()
    except TimeoutError:
        return Answer("timeout")
    received_ms = time.time() * 1000
    return parse(raw, received_ms)


def parse(raw: bytes, received_ms: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return Answer("reset", detail="closed without an answer")
    try:
        code = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Answer("http_error", detail=repr(head[:80]))
    if code != 200:
        return Answer("http_error", detail=f"{code} {body[:120]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    try:
        state = json.loads(body).get("status")
    except ValueError:
        return Answer("http_error", detail=f"200 with a body that is not JSON: {body[:120]!r}")
    if state != "succeeded":
        return Answer("not_finished", detail=str(state))
    return Answer("ok", received_ms)


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def record(
    m: Metrics,
    cfg: Config,
    rnd: int,
    answers: list[Answer],
    finished: list[int],
    sampler: Sampler,
    cpu_s: float,
    first: float,
) -> None:
    n = len(answers)
    counts: dict[str, Any] = {k: sum(a.outcome == k for a in answers) for k in OUTCOMES}
    wake = [a.received_ms - f for a, f in zip(answers, finished) if a.outcome == "ok"]
    span_s = (max(finished) - min(finished)) / 1000 if finished else 0.0
    m.add("longpoll/clients", n, "clients")
    for k in OUTCOMES:
        m.add(f"longpoll/{k}", counts[k], "clients")
    m.add("longpoll/errors", n - counts["ok"], "clients")
    if wake:
        for p in (50, 99):
            m.add(f"longpoll/wake/p{p}", pct(wake, p), "ms")
        m.add("longpoll/wake/max", max(wake), "ms")
    else:
        m.add("longpoll/wake/p50", None, "ms")
    m.add("longpoll/finish_rate", (n - 1) / span_s if span_s else None, "tasks/s")
    m.add("longpoll/finish_late_ms", min(finished) - first * 1000 if finished else None, "ms")
    if sampler.rss_waiting is not None:
        m.add("longpoll/rss_waiting_mb", sampler.rss_waiting / 2**20, "MiB")
    if sampler.uss_waiting is not None:
        m.add("longpoll/uss_waiting_mb", sampler.uss_waiting / 2**20, "MiB")
    if sampler.held is not None:
        m.add("longpoll/held", sampler.held, "connections")
    m.add("longpoll/rss_peak_mb", sampler.rss_peak / 2**20, "MiB")
    m.add("longpoll/server_cpu_ms", cpu_s * 1000 / n, "ms/client")
    details = sorted({f"{a.outcome}: {a.detail}" for a in answers if a.outcome != "ok" and a.detail})[:3]
    if details:
        m.notes.append(f"long-poll round {rnd + 1} error samples: " + "; ".join(details))
    rate = f"{(n - 1) / span_s:.0f}" if span_s else "?"
    wake_text = f"p50/p99/max {pct(wake, 50):.1f}/{pct(wake, 99):.1f}/{max(wake):.1f} ms" if wake else "none woken"
    print(
        f"    {counts['ok']}/{n} woken, {wake_text}; "
        + ", ".join(f"{k} {counts[k]}" for k in OUTCOMES[1:])
        + f"; finished at {rate} tasks/s; "
        f"status RSS with all waiting {(sampler.rss_waiting or 0) / 2**20:.0f} MiB "
        f"(peak {sampler.rss_peak / 2**20:.0f} MiB), {sampler.held} connections held",
        flush=True,
    )
