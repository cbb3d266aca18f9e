"""HTTP load from a separate process: wrk when present (installed from Debian's packages when
missing and we are root), else `python -m bench.loadgen` (threads over keep-alive connections).

Both report the same JSON: requests, duration_us, errors (non-2xx statuses and socket
errors), and latency p50/p99/max in microseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def ensure_wrk(log: list[str]) -> str | None:
    """Path of wrk, installing it with apt-get if missing and we are root; None if unavailable."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log.append("wrk missing and not root: using the Python load generator")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-qq", "wrk"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "wrk"],
    ):
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=300)
        if shutil.which("wrk"):
            log.append("installed wrk from Debian's packages")
            return shutil.which("wrk")
    log.append("apt-get could not install wrk: using the Python load generator")
    return None


class Load:
    def __init__(self, wrk: str | None) -> None:
        self.wrk = wrk
        self.tool = "wrk" if wrk else "python bench.loadgen"
        self._script: Path | None = None

    def run(self, url: str, body: str, connections: int, duration_s: float) -> dict[str, Any]:
        if self.wrk:
            return self._run_wrk(url, body, connections, duration_s)
        argv = [sys.executable, "-m", "bench.loadgen", url, body, str(connections), str(duration_s)]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 60, cwd=Path(__file__).resolve().parent.parent
        )
        return _parse(out.stdout, out.stderr)

    def _run_wrk(self, url: str, body: str, connections: int, duration_s: float) -> dict[str, Any]:
        if self._script is None:
            fd, name = tempfile.mkstemp(suffix=".lua", prefix="bench-wrk-")
            os.write(fd, WRK_SCRIPT.encode())
            os.close(fd)
            self._script = Path(name)
        # one wrk thread drives 64 connections easily; a second thread would only take CPU
        # from the server under test on this 2-core machine
        argv = [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(self._script),
            url,
        ]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 60, env={**os.environ, "BENCH_BODY": body}
        )
        return _parse(out.stdout, out.stderr)

    def close(self) -> None:
        if self._script:
            self._script.unlink(missing_ok=True)


def _parse(stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            r = json.loads(line[len("BENCH_JSON ") :])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            return r
    raise RuntimeError(f"load generator printed no result:\n{stdout[-2000:]}\n{stderr[-2000:]}")
