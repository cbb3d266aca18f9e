"""The report printed from a run's result (medians [min–max], ratios taskbus ÷ peer from the same
run, never across runs), and the lead's targets met or not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.config import (
    CONSOLE_BATCH,
    CONSOLE_CALLS,
    CONSOLE_HTTP_CALLS,
    CONSOLE_RUNNING,
    FSYNC_CLIENTS,
    FSYNC_SAMPLE,
    HTTP_LEVELS,
    MEMORY_BATCH,
    QUEUE,
    Config,
)
from taskbus.admin import STATES


def fmt(summary: dict[str, Any], key: str, digits: int = 0) -> str:
    m = summary.get(key)
    if not m:
        return "—"
    if m.get("na") and m["median"] is None:
        return "n/a"
    if m["median"] is None:
        return "failed"
    f = f"{{:,.{digits}f}}"
    text = f.format(m["median"])
    if m["rounds"] > 1:
        text += f" [{f.format(m['min'])}–{f.format(m['max'])}]"
    return text


def median(summary: dict[str, Any], key: str) -> float | None:
    """The metric's median, None when it is missing or failed."""
    value = summary.get(key, {}).get("median")
    return None if value is None else float(value)


def other_cores(summary: dict[str, Any], base: str) -> str:
    m = summary.get(base + "/host_other_cores")
    return f"{m['median']:.2f}" if m and m["median"] is not None else ""


def ratio(summary: dict[str, Any], a: str, b: str) -> float | None:
    ma, mb = summary.get(a, {}).get("median"), summary.get(b, {}).get("median")
    return ma / mb if ma and mb else None


def rfmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def best_key(summary: dict[str, Any], keys: list[str]) -> str | None:
    have = [k for k in keys if summary.get(k, {}).get("median")]
    return max(have, key=lambda k: summary[k]["median"]) if have else None


def table(result: dict[str, Any]) -> str:
    s = result["metrics"]
    cfg = result["config"]
    lines: list[str] = []
    w = lines.append
    rounds = f"median [min–max] of {cfg['rounds']} round(s)"
    w(f"taskbus bench {result['started']}  ({rounds}; ratios are taskbus ÷ peer from this run)")
    kafka = result["host"].get("kafka")
    w(
        f"host: {result['host']['cpus']} cpu, Python {result['host']['python']}, Valkey {result['host']['valkey']}"
        + (f", Kafka broker {kafka}" if kafka else "")
        + f"; HTTP load: {result['host']['load']}"
    )
    other = result.get("host_other_load", {})
    if other:
        w(
            "CPU used by processes outside this bench (other work on the host), mean/max cores: "
            + ", ".join(f"{k} {v['mean_cores']:.2f}/{v['max_cores']:.2f}" for k, v in other.items())
        )
        if max(v["mean_cores"] for v in other.values()) > 0.2:
            w("WARNING: the host was busy with other work during this run: the figures below are perturbed")
    if any(k.startswith("drain/") for k in s):
        drain_table(w, s, cfg)
    if any(k.startswith(("enqueue/", "http/")) for k in s):
        enqueue_table(w, s, cfg)
    if any(k.startswith("latency/") for k in s):
        latency_table(w, s, cfg)
    if any(k.startswith("longpoll/") for k in s):
        longpoll_table(w, s, cfg)
    if any(k.startswith("fsync/") for k in s):
        fsync_table(w, s)
    if any(k.startswith("memory/") for k in s):
        memory_table(w, s)
    if any(k.startswith("console/") for k in s):
        console_table(w, s)
    if any(k.startswith("limits/") for k in s):
        from bench.limits import limits_table  # its own module: the section and its table together
        limits_table(w, s)
    if any(k.startswith("tracing/") for k in s):
        tracing_table(w, s)
    # targets
    w("")
    w("TARGETS (lead's)")
    for t in result["targets"]:
        w(f"  {t['name']:<58} {t['value']:<22} {t['verdict']}")
    if result["errors"]:
        w("")
        w("ERRORS")
        for e in result["errors"]:
            w("  " + e.splitlines()[0][:300])
    if result["notes"]:
        w("")
        for n in result["notes"]:
            w("note: " + n)
    return "\n".join(lines)


DRAIN_PEERS = [("dramatiq/1p", 1), ("dramatiq/2p", 2), ("huey/thread", 1), ("huey/process", 2)]
DRAIN_PEERS += [("rq/simple", 1), ("celery/prefork", 2)]


def drain_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w(
        "1/4. DRAIN  N tasks queued first (one INCR each), then the workers start; tasks/s from first to last "
        "completion; CPU from /proc (worker process trees) and INFO cpu (Redis); other = cores busy outside the bench"
    )
    if any(k.startswith("drain/taskbus-kafka/") for k in s):
        w(
            "taskbus on Kafka: CHANNEL=kafka, same task and N, a fresh queue (topic + consumer group) per round on "
            "the embedded tansu broker (in memory, KAFKA_PARTITIONS=6, replication 1); timed from the first "
            "completion, so the group join is not counted; Redis CPU = task state; tansu CPU in the last column"
        )
    hdr = (
        f"{'system':<44} {'N':>6} {'tasks/s':>22} {'worker CPU ms/task':>22} {'Redis CPU µs/task':>20} "
        f"{'other':>5}  {'taskbus ÷ peer (tasks/s)'}"
    )
    w(hdr)
    w("-" * len(hdr))
    tb_best = best_per_procs(s, "taskbus", cfg["concurrencies"])
    kafka_best = best_per_procs(s, "taskbus-kafka", cfg["concurrencies"])
    rows = [(f"taskbus/{p}p/c{c}", p) for p in (1, 2) for c in cfg["concurrencies"]]
    rows += [(f"taskbus-kafka/{p}p/c{c}", p) for p in (1, 2) for c in cfg["concurrencies"]]
    rows += [(f"taskbus-prio/{p}p/c{c}", p) for p in (1, 2) for c in cfg["concurrencies"]]  # bench/priority.py
    for key, p in rows + DRAIN_PEERS:
        base = f"drain/{key}"
        if base + "/tasks_s" not in s:
            continue
        label = s[base + "/tasks_s"]["label"]
        n = int(s.get(base + "/n", {}).get("median") or 0)
        if key.startswith("taskbus/"):
            vs = "best" if tb_best.get(p) == base else ""
        elif key.startswith("taskbus-kafka/"):
            vs = kafka_vs(s, base, p, tb_best.get(p), kafka_best.get(p) == base)
        elif key.startswith("taskbus-prio/"):
            plain = "drain/taskbus/" + key.removeprefix("taskbus-prio/")
            vs = f"{rfmt(ratio(s, base + '/tasks_s', plain + '/tasks_s'))} of no priorities, same procs and CONCURRENCY"
        else:
            tb = tb_best.get(p)
            vs = f"{rfmt(ratio(s, tb + '/tasks_s', base + '/tasks_s'))} vs taskbus {p} proc(s)" if tb else "—"
        w(
            f"{label:<44} {n:>6} {fmt(s, base + '/tasks_s'):>22} {fmt(s, base + '/worker_cpu_ms', 3):>22} "
            f"{fmt(s, base + '/redis_cpu_us', 1):>20} {other_cores(s, base):>5}  {vs}"
        )


def best_per_procs(s: dict[str, Any], family: str, concurrencies: list[int]) -> dict[int, str]:
    """The fastest CONCURRENCY's metric base (drain/<family>/<p>p/c<c>) per process count."""
    best: dict[int, str] = {}
    for p in (1, 2):
        k = best_key(s, [f"drain/{family}/{p}p/c{c}/tasks_s" for c in concurrencies])
        if k:
            best[p] = k.removesuffix("/tasks_s")
    return best


def kafka_vs(s: dict[str, Any], base: str, p: int, tb: str | None, best: bool) -> str:
    """The last column of a Kafka row: Kafka ÷ Redis on the best rows, the broker's CPU, rebalances."""
    vs = ""
    if best and tb:
        vs = f"best: {rfmt(ratio(s, base + '/tasks_s', tb + '/tasks_s'))} Kafka ÷ Redis {p} proc(s); "
    elif best:
        vs = "best; "
    vs += f"tansu CPU {fmt(s, base + '/broker_cpu_us', 1)} µs/task"
    rebalances = s.get(base + "/rebalances", {}).get("max")
    if rebalances:
        vs += f"; {rebalances:.0f} rebalance(s) in a round"
    return vs


PYTHON_ROWS = [
    ("taskbus", "taskbus Store.enqueue"),
    ("taskbus-kafka", "taskbus Store.enqueue, Kafka (acked)"),
    ("dramatiq", "Dramatiq actor.send()"),
    ("huey", "Huey task()"),
    ("rq", "RQ Queue.enqueue()"),
    ("celery", "Celery task.delay()"),
]
HTTP_PEERS = ("ff_asgi", "ff_flask", "blog")  # after the taskbus rows, in this order
HTTP_FALLBACK = {"taskbus": "taskbus POST /tasks", "blog": "blog app POST /enqueue/ (uvicorn ×2)"}


def enqueue_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w("2. ENQUEUE")
    hdr = f"{'what':<58} {'tasks/s':>22} {'p50 ms':>18} {'p99 ms':>22} {'srv CPU ms/req':>20}  taskbus ÷ peer"
    w(hdr)
    w("-" * len(hdr))
    py = "enqueue/python1/"
    for fam, label in PYTHON_ROWS:
        if py + fam not in s:
            continue
        if fam == "taskbus-kafka":
            r = ratio(s, py + fam, py + "taskbus")
            vs = f"{rfmt(r)} Kafka ÷ Redis" if r else ""
        else:
            r = ratio(s, py + "taskbus", py + fam) if fam != "taskbus" else None
            vs = rfmt(r) if r else ""
        w(f"{'Python 1 at a time: ' + label:<58} {fmt(s, py + fam):>22} {'':>18} {'':>22} {'':>20}  {vs}")
    key = "enqueue/python_batch/taskbus"
    if key in s:
        label = f"Python batched ({cfg['batch']}/call): taskbus Store.enqueue_many"
        w(f"{label:<58} {fmt(s, key):>22}" + (f"   ({s[key]['na']})" if s[key].get("na") else ""))
    http_rows(w, s, cfg)


def http_names(s: dict[str, Any]) -> list[str]:
    """The servers of the HTTP rows (http/<name>/c<conns>): taskbus targets first, then the peers."""
    found: list[str] = []
    for key in s:
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "http" and parts[2].startswith("c") and parts[1] != "taskbus_batch":
            if parts[1] not in found:
                found.append(parts[1])
    first = [n for n in found if n not in HTTP_PEERS]
    return first + [n for n in HTTP_PEERS if n in found]


def http_label(s: dict[str, Any], name: str) -> str:
    for conns in HTTP_LEVELS:
        label = s.get(f"http/{name}/c{conns}", {}).get("label", "")
        if label and not label.startswith("http/"):
            return str(label)
    return HTTP_FALLBACK.get(name, name)


def http_rows(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    """HTTP single POST at each connection count for every server (ratio ÷ the blog app at the
    same count), each server's best count with its ratio ÷ the blog app's best, then the batch route."""
    names = http_names(s)
    if not names:
        return
    w(
        "HTTP single POST (taskbus POST /tasks; ff = a bare functions-framework function doing one Redis SET, "
        "the ceiling of its serving path; blog app POST /enqueue/): every server 2 processes, all in this run, "
        "levels round-robin; last column ÷ blog app at the same c"
    )
    for conns in HTTP_LEVELS:
        for name in names:
            key = f"http/{name}/c{conns}"
            if key not in s:
                continue
            r = ratio(s, key, f"http/blog/c{conns}") if name != "blog" else None
            label = f"HTTP c={conns:<3}{http_label(s, name)}"
            w(
                f"{label[:58]:<58} {fmt(s, key):>22} {fmt(s, key + '/p50_ms', 2):>18} "
                f"{fmt(s, key + '/p99_ms', 2):>22} {fmt(s, key + '/server_cpu_ms', 3):>20}  {rfmt(r) if r else ''}"
            )
    w("HTTP best of each (connection count with the highest median tasks/s); last column ÷ blog app's best")
    blog = best_key(s, [f"http/blog/c{c}" for c in HTTP_LEVELS])
    for name in names:
        best = best_key(s, [f"http/{name}/c{c}" for c in HTTP_LEVELS])
        if best is None:
            w(f"  {http_label(s, name)[:56]:<56} {'failed':>22}")
            continue
        r = ratio(s, best, blog) if blog and name != "blog" else None
        c = best.rsplit("/c", 1)[1]
        w(f"  {http_label(s, name)[:56]:<56} {fmt(s, best):>22}   at c={c:<3}{'':>47}  {rfmt(r) if r else ''}")
    key = "http/taskbus_batch/c16"
    if key in s:
        label = f"HTTP c=16 POST /tasks/batch ({cfg['batch']}/request)"
        single = best_key(s, [f"http/taskbus/c{c}" for c in HTTP_LEVELS])
        r = ratio(s, key, single) if single else None
        w(
            f"{label:<58} {fmt(s, key):>22} {fmt(s, key + '/p50_ms', 2):>18} {fmt(s, key + '/p99_ms', 2):>22} "
            f"{fmt(s, key + '/server_cpu_ms', 3):>20}"
            + (f"   ({s[key]['na']})" if s[key].get("na") else f"  {rfmt(r)} ÷ best single POST /tasks (same server)")
        )


def latency_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w(
        f"3. LATENCY  one idle warmed worker; {cfg['latency_tasks']} echo tasks one at a time at {cfg['rate']:.0f}/s "
        f"per round; task-hash times (Redis TIME, 1 ms resolution)"
    )
    kafka = "latency/kafka_enqueue_start/p50" in s
    hdr = f"{'what (ms)':<58} {'p50':>16} {'p99':>16} {'max':>16}" + ("  Kafka ÷ Redis p50/p99/max" if kafka else "")
    w(hdr)
    w("-" * len(hdr))
    w(
        "(long-poll wake-up = client receive time − finished_ms; finished_ms is floored to the ms, so it reads "
        "0–1 ms high)"
    )
    if kafka:
        w(
            "(Kafka: the same worker and tasks on CHANNEL=kafka, a fresh queue per round, run right after the Redis "
            "round; created_ms precedes the produce, so → start includes the producer's wait for the broker's ack; "
            "a ratio over a 0 ms Redis figure shows —)"
        )
        w(
            "(on tansu a consumer's fetch is answered when librdkafka's fetch.wait.max.ms runs out "
            "(KAFKA_FETCH_WAIT_MS, 100 ms by default) rather than when a record arrives, so the Kafka rows "
            "are mostly that wait: a broker artefact, see bench/README.md)"
        )
    for name, label, d in (
        ("enqueue_start", "enqueue → start", 0),
        ("kafka_enqueue_start", "enqueue → start, taskbus on Kafka", 0),
        ("enqueue_finish", "enqueue → finish", 0),
        ("kafka_enqueue_finish", "enqueue → finish, taskbus on Kafka", 0),
        ("longpoll_wake", f"status long-poll wake-up ({cfg['longpolls']}/round)", 2),
    ):
        base = f"latency/{name}"
        if base + "/p50" in s:
            p50, p99, top = (fmt(s, f"{base}/{q}", d) for q in ("p50", "p99", "max"))
            vs = ""
            if name.startswith("kafka_"):
                redis_base = "latency/" + name.removeprefix("kafka_")
                vs = "  " + "/".join(rfmt(ratio(s, f"{base}/{q}", f"{redis_base}/{q}")) for q in ("p50", "p99", "max"))
            w(f"{label:<58} {p50:>16} {p99:>16} {top:>16}{vs}")


def longpoll_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    n = int(s.get("longpoll/clients", {}).get("median") or cfg.get("longpoll_clients", 0))
    w("")
    w(
        f"3b. LONG-POLL CAPACITY  one status instance (`taskbus serve status`, 2 processes), {n:,} concurrent "
        f"GET /tasks/<id>?wait={cfg.get('longpoll_wait_s', 30):g} clients (asyncio sockets, one task each), their "
        f"tasks finished by a real worker (no-op handler, delay_s slots at {cfg.get('longpoll_rate', 500):.0f}/s, "
        "random order)"
    )
    hdr = f"{'what':<58} {'value':>28}"
    w(hdr)
    w("-" * len(hdr))
    rows = [
        ("wake-up after the task finished, p50 (ms)", "longpoll/wake/p50", 1),
        ("wake-up after the task finished, p99 (ms)", "longpoll/wake/p99", 1),
        ("wake-up after the task finished, max (ms)", "longpoll/wake/max", 1),
        ("clients woken with their finished task", "longpoll/ok", 0),
        ("errors, all kinds (clients)", "longpoll/errors", 0),
        ("  timeouts: no answer within wait + 10 s", "longpoll/timeout", 0),
        ("  connection refused/failed", "longpoll/connect_error", 0),
        ("  connection reset / closed without an answer", "longpoll/reset", 0),
        ("  non-200 answers", "longpoll/http_error", 0),
        ("  answered before the task finished", "longpoll/not_finished", 0),
        ("status instance RSS with all clients waiting (MiB, all procs)", "longpoll/rss_waiting_mb", 1),
        ("  USS of the same processes (MiB)", "longpoll/uss_waiting_mb", 1),
        ("  peak RSS during the round (MiB)", "longpoll/rss_peak_mb", 1),
        ("client connections the instance had accepted, all sent", "longpoll/held", 0),
        ("tasks finished at (tasks/s, first to last finished_ms)", "longpoll/finish_rate", 0),
        ("first task finished after its slot (ms)", "longpoll/finish_late_ms", 0),
        ("status instance CPU per client (ms)", "longpoll/server_cpu_ms", 3),
    ]
    for label, key, d in rows:
        if key in s:
            w(f"{label:<58} {fmt(s, key, d):>28}")
    w("(wake-up = client receive time − finished_ms, Redis TIME floored to the ms: reads 0–1 ms high; a client")
    w(" that got no thread until after its task finished is woken late, not counted as an error)")


def fsync_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    w("")
    w(f"4b. ENQUEUE_FSYNC  Store.enqueue on a Valkey with an append-only file: {FSYNC_SAMPLE} one at a time "
      f"(latency), then {FSYNC_CLIENTS} threads (throughput); ratios against no fsync wait, same run")
    hdr = f"{'mode':<44} {'p50 ms':>22} {'p99 ms':>22} {f'c{FSYNC_CLIENTS} tasks/s':>22} {'÷ off':>7}"
    w(hdr)
    w("-" * len(hdr))
    labels = {
        "off": "ENQUEUE_FSYNC=false (appendfsync everysec)",
        "everysec": "ENQUEUE_FSYNC=true, appendfsync everysec",
        "always": "ENQUEUE_FSYNC=true, appendfsync always",
    }
    for name, label in labels.items():
        tput = f"fsync/{name}/c{FSYNC_CLIENTS}"
        w(f"{label:<44} {fmt(s, f'fsync/{name}/p50', 2):>22} {fmt(s, f'fsync/{name}/p99', 2):>22} "
          f"{fmt(s, tput):>22} {rfmt(ratio(s, tput, f'fsync/off/c{FSYNC_CLIENTS}')):>7}")


def memory_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    def v(key: str) -> float | None:
        return median(s, key)

    n, ttl = int(v("memory/tasks") or 0), int(v("memory/result_ttl_s") or 0)
    w("")
    w(
        f"5. MEMORY  Redis INFO used_memory (allocator bytes in use, not RSS) on a fresh Valkey of its own; {n:,} echo "
        f"tasks by Store.enqueue_many ({MEMORY_BATCH}/call), drained by 2 workers started with RESULT_TTL_S={ttl} s "
        "(short so the test is quick; default 1 day)"
    )
    hdr = f"{'state':<58} {'used_memory B':>16} {'Δ baseline B':>16} {'B/task':>10} {'RSS B':>16}"
    w(hdr)
    w("-" * len(hdr))
    base = v("memory/baseline")
    drain, gone = v("memory/drain_s"), v("memory/expired_after_s")
    rows = (
        ("baseline", "baseline: stream + consumer group, scripts loaded, no task"),
        ("queued", f"{n:,} tasks queued (hash + stream entry each)"),
        ("finished", f"{n:,} tasks succeeded, workers stopped" + (f" ({drain:.0f} s drain)" if drain else "")),
        ("after_ttl", "after RESULT_TTL_S: task keys expired" + (f" ({gone:.0f} s after the drain)" if gone else "")),
        # raw: holds the statistics gathered since the previous reading's reset
        ("after_ttl_reset", "  same, slow log and command stats reset like the rest"),
    )
    for key, label in rows:
        used = v(f"memory/{key}")
        if used is None:
            continue
        delta = f"{used - base:+,.0f}" if base is not None and key != "baseline" else ""
        per = v(f"memory/{key}/per_task")
        rss = v(f"memory/{key}/rss")
        w(
            f"{label:<58} {used:>16,.0f} {delta:>16} {'' if per is None else f'{per:,.0f}':>10} "
            f"{'' if rss is None else f'{rss:,.0f}':>16}"
        )
    slow = int(v("memory/slowlog_len") or 0)
    w(
        "(every reading but the raw 'after RESULT_TTL_S' one follows SLOWLOG RESET + CONFIG RESETSTAT: the slow log "
        f"({slow} entries cleared in all, mostly 1000-task enqueue calls over 10 ms) and the per-command latency "
        "histograms (~16 KB per command name) hold memory, bounded, not per task)"
    )
    w("(RSS for reference only: the allocator may keep freed pages; used_memory is what Redis holds)")


CONSOLE_RSS_GROWTH_MB = 5  # "does not grow with the task count": a few MiB of allocator noise at most


def console_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric name under console/<scale>/, label) of every timed read, in table order."""
    rows = [("overview", "Admin.overview(queue)"), ("overviews", "Admin.overviews() (every known queue)")]
    for state in STATES:
        rows += [(f"tasks/{state}/50", f"tasks {state}, first page, limit 50"),
                 (f"tasks/{state}/200", f"tasks {state}, first page, limit 200")]
        hops = s.get(f"console/full/tasks/{state}/deep/pages_in", {}).get("median")
        if hops is not None:
            rows.append((f"tasks/{state}/deep", f"tasks {state}, page {hops + 1:.0f} by next_cursor, limit 50"))
    rows += [("task/queued", "Admin.task(id), a queued task"), ("task/dead", "Admin.task(id), a dead letter"),
             ("task/unknown", "Admin.task(id), an id never enqueued")]
    return rows


def console_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    def v(key: str) -> float | None:
        return median(s, key)

    def ms(key: str) -> str:
        x = v(key)
        return "" if x is None else f"{x:,.2f}"

    n = int(v("console/tasks") or 0)
    w("")
    w(
        f"6. CONSOLE  the operator core's reads (taskbus.admin.Admin, the console's code path) in the bench process "
        f"on a Valkey of its own, server time = the call's wall time ({CONSOLE_CALLS} calls each after one untimed; "
        f"p99 of {CONSOLE_CALLS} = the slowest); empty queue, then one queue holding {n:,} queued, {n // 10:,} dead "
        f"letters (real: `permanent` tasks run by 2 workers), {n // 100:,} scheduled (delay_s 3600) and "
        f"{CONSOLE_RUNNING:,} running (`block` tasks held by 2 workers)"
    )
    fills = [("queued", "queued"), ("scheduled", "scheduled"), ("dead-to-be", "dead enqueued"),
             ("dead", "dead-lettered by the workers")]
    fill_s = v("console/fill_s")
    took = "" if fill_s is None else f" in {fill_s:.0f} s"
    w(f"fill{took}, tasks/s (Client.enqueue_many, {CONSOLE_BATCH}/call): " + ", ".join(
        f"{label} {v(f'console/fill/{key}_tasks_s') or 0:,.0f}" for key, label in fills))
    counts = {state: v(f"console/count/{state}") for state in ("queued", "scheduled", "running", "dead")}
    used = v("console/redis_used_memory")
    w("overview counts after the fill: " + ", ".join(f"{k} {c:,.0f}" for k, c in counts.items() if c is not None)
      + ("" if used is None else f"; Valkey used_memory {used / 2**20:,.0f} MiB"))
    hdr = (f"{'read (ms)':<58} {'empty p50':>10} {'empty p99':>10} {'full p50':>10} {'full p99':>10} "
           f"{'CPU p99':>8} {'Redis':>6} {'GC':>6} {'rows':>5}")
    w(hdr)
    w("-" * len(hdr))
    for name, label in console_rows(s):
        rows = v(f"console/full/{name}/rows")
        if v(f"console/empty/{name}/median_ms") is None and v(f"console/full/{name}/median_ms") is None:
            continue
        w(
            f"{label:<58} {ms(f'console/empty/{name}/median_ms'):>10} {ms(f'console/empty/{name}/p99_ms'):>10} "
            f"{ms(f'console/full/{name}/median_ms'):>10} {ms(f'console/full/{name}/p99_ms'):>10} "
            f"{ms(f'console/full/{name}/cpu_p99_ms'):>8} {ms(f'console/full/{name}/redis_ms'):>6} "
            f"{ms(f'console/full/{name}/gc_full_ms'):>6} "
            f"{'' if rows is None else f'{rows:.0f}':>5}"
        )
    w("(full queue: CPU p99 = the bench thread's CPU time in the call (redis-py packing and parsing, the rows); "
      "Redis = Valkey's command time per call, mean, from INFO commandstats; GC = the bench process's full garbage "
      f"collections during the {CONSOLE_CALLS} calls, total; the rest of the wall time is loopback and waiting for "
      "a core)")
    if s.get("console/http", {}).get("na"):
        w(f"console function over HTTP: n/a ({s['console/http']['na']})")
        return
    label = s.get("console/full/http/queues/median_ms", {}).get("label", "")
    w(f"console function over HTTP (`taskbus serve console`, WEB_WORKERS=1: {label}), client-side latency, one "
      f"keep-alive client, {CONSOLE_HTTP_CALLS} GETs alternating:")
    for name, path in (("queues", "GET /api/queues"), ("tasks_queued", f"GET /api/queues/{QUEUE}/tasks?state=queued")):
        key = f"http/{name}"
        w(
            f"{'  ' + path:<58} {ms(f'console/empty/{key}/median_ms'):>10} {ms(f'console/empty/{key}/p99_ms'):>10} "
            f"{ms(f'console/full/{key}/median_ms'):>10} {ms(f'console/full/{key}/p99_ms'):>10}"
        )
    cold, before, after = (v(f"console/rss/{x}_mb") for x in ("cold", "before", "after"))
    if None not in (cold, before, after):
        assert cold is not None and before is not None and after is not None
        w(
            f"console RSS, whole process tree (MiB): started {cold:.1f}; empty queue after {CONSOLE_HTTP_CALLS} GETs "
            f"{before:.1f}; after the fill and {CONSOLE_HTTP_CALLS} more GETs {after:.1f} ({after - before:+.1f})"
        )


def tracing_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    """Tracing's cost: OpenTelemetry not importable, installed but off, on (OTLP to a local receiver)."""
    w("")
    w("TRACING: drain (1 proc, c32) and POST /tasks (c16) with OpenTelemetry absent / off / on")
    w(f"  {'':<40} {'absent':>18} {'off':>18} {'on':>18} {'off/absent':>11} {'on/off':>8}")
    for part, unit in (("drain", "tasks/s"), ("http", "tasks/s")):
        base = f"tracing/{part}"
        w(f"  {part + ' ' + unit:<40} " + " ".join(f"{fmt(s, f'{base}/{v}'):>18}" for v in ("absent", "off", "on"))
          + f" {rfmt(ratio(s, f'{base}/off', f'{base}/absent')):>11} {rfmt(ratio(s, f'{base}/on', f'{base}/off')):>8}")
    w(f"  {'worker CPU ms/task':<40} " + " ".join(
        f"{fmt(s, f'tracing/drain/{v}/worker_cpu_ms', 3):>18}" for v in ("absent", "off", "on")))
    w(f"  {'server p99 ms (http)':<40} " + " ".join(
        f"{fmt(s, f'tracing/http/{v}/p99_ms', 2):>18}" for v in ("absent", "off", "on")))


def console_worst(s: dict[str, Any], stat: str) -> tuple[str, float] | None:
    """The slowest listing page with everything filled in, by `stat` (median_ms or p99_ms)."""
    found = [(name, s[f"console/full/{name}/{stat}"]["median"]) for name, _ in console_rows(s)
             if name.startswith("tasks/") and s.get(f"console/full/{name}/{stat}", {}).get("median") is not None]
    return max(found, key=lambda x: x[1]) if found else None


def targets(s: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: float | None, ok: Callable[[float], bool], unit: str) -> None:
        out.append(
            {
                "name": name,
                "value": "—" if value is None else f"{value:.2f}{unit}",
                "raw": value,
                "verdict": "n/a" if value is None else ("MET" if ok(value) else "NOT MET"),
            }
        )

    tb2 = best_key(s, [f"drain/taskbus/2p/c{c}/tasks_s" for c in cfg.concurrencies])
    dq = best_key(s, ["drain/dramatiq/1p/tasks_s", "drain/dramatiq/2p/tasks_s"])
    add("drain, taskbus 2 procs ≥ 4× Dramatiq's best", ratio(s, tb2, dq) if tb2 and dq else None, lambda v: v >= 4, "×")
    p99 = s.get("latency/enqueue_start/p99", {}).get("median")
    add("enqueue→start p99 ≤ 2 ms", p99, lambda v: v <= 2, " ms")
    tbh = best_key(s, [f"http/taskbus/c{c}" for c in HTTP_LEVELS])
    blog = best_key(s, [f"http/blog/c{c}" for c in HTTP_LEVELS])
    add(
        "HTTP single enqueue ≥ 1.2× blog app (each at its best c)",
        ratio(s, tbh, blog) if tbh and blog else None,
        lambda v: v >= 1.2,
        "×",
    )
    wake = s.get("latency/longpoll_wake/p99", {}).get("median")
    add("long-poll wake-up p99 ≤ 5 ms", wake, lambda v: v <= 5, " ms")
    if "longpoll" in cfg.only:
        errors = s.get("longpoll/errors", {}).get("max")
        p99 = s.get("longpoll/wake/p99", {}).get("max")
        n = cfg.longpoll_clients
        add(f"long-poll {n:,} clients: errors (target 0, worst round)", errors, lambda v: v == 0, "")
        add(f"long-poll {n:,} clients: wake-up p99 ≤ 10 ms (worst round)", p99, lambda v: v <= 10, " ms")
    batch = s.get("http/taskbus_batch/c16", {}).get("median")
    single = best_key(s, [f"http/taskbus/c{c}" for c in HTTP_LEVELS])
    if batch and single:
        add("POST /tasks/batch ≥ 10× single (tasks/s)", batch / s[single]["median"], lambda v: v >= 10, "×")
    if "memory" in cfg.only:
        grown = s.get("memory/finished", {}).get("median")
        base = s.get("memory/baseline", {}).get("median")
        delta = s.get("memory/after_ttl_reset/delta", {}).get("median")
        share = delta / (grown - base) * 100 if None not in (grown, base, delta) and grown != base else None
        add("Redis memory after RESULT_TTL_S ≤ baseline + 1% of growth", share, lambda v: v <= 1, "%")
    if "console" in cfg.only:
        console_targets(s, cfg, add)
    return out


def console_targets(s: dict[str, Any], cfg: Config, add: Callable[..., None]) -> None:
    """Issue 12's scale figures: server time of the overview and of every listing page (p99 of
    CONSOLE_CALLS, the median too), and the console's RSS growth from the empty queue to the full one."""
    n = f"{cfg.console_tasks:,} queued"
    overview = [s.get(f"console/full/{x}/p99_ms", {}).get("median") for x in ("overview", "overviews")]
    have = [x for x in overview if x is not None]
    add(f"console overview ≤ 50 ms at {n} (p99 of {CONSOLE_CALLS})", max(have) if have else None,
        lambda v: v <= 50, " ms")
    for stat, what in (("p99_ms", f"p99 of {CONSOLE_CALLS}"), ("median_ms", "median")):
        worst = console_worst(s, stat)
        add(f"console every listing page ≤ 50 ms ({what}; worst: {worst[0] if worst else '—'})",
            worst[1] if worst else None, lambda v: v <= 50, " ms")
    before, after = (s.get(f"console/rss/{x}_mb", {}).get("median") for x in ("before", "after"))
    add(f"console RSS growth, empty → {n} ≤ {CONSOLE_RSS_GROWTH_MB} MiB",
        after - before if before is not None and after is not None else None,
        lambda v: v <= CONSOLE_RSS_GROWTH_MB, " MiB")


