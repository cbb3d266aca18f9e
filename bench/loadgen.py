"""Fallback HTTP load generator when wrk is unavailable:
`python -m bench.loadgen URL BODY CONNECTIONS DURATION_S` — one thread per keep-alive
connection POSTing BODY in a loop; prints `BENCH_JSON {...}` like the wrk script.
(The GIL makes it weaker than wrk at high connection counts; the table names the tool used.)"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse


def main() -> None:
    url, body, conns, duration = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4])
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    latencies: list[list[float]] = [[] for _ in range(conns)]
    errors = {"status": 0, "socket": 0}
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + duration

    def loop(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine = latencies[i]
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                conn.request("POST", parts.path or "/", body, headers)
                resp = conn.getresponse()
                resp.read()
                if not 200 <= resp.status < 400:
                    with lock:
                        errors["status"] += 1
            except (OSError, http.client.HTTPException):
                with lock:
                    errors["socket"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            mine.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    elapsed = time.perf_counter() - start
    lat = sorted(x for per in latencies for x in per)

    def pct(p: float) -> int:
        return int(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6) if lat else 0

    print(
        "BENCH_JSON "
        + json.dumps(
            {
                "requests": len(lat) + errors["status"],
                "duration_us": int(elapsed * 1e6),
                "status_errors": errors["status"],
                "socket_errors": errors["socket"],
                "p50_us": pct(50),
                "p99_us": pct(99),
                "max_us": int(lat[-1] * 1e6) if lat else 0,
            }
        )
    )


if __name__ == "__main__":
    main()
