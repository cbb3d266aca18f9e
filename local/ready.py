"""Waits until both functions answer /healthz, prints how to use the stack, then idles
(the runner stops everything when any of its processes exits)."""

from __future__ import annotations

import signal
import sys
import time
import urllib.request

from taskbus.settings import Settings


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> None:
    s = Settings.from_env()
    enqueue, status = f"http://{s.host}:{s.enqueue_port}", f"http://{s.host}:{s.status_port}"
    deadline = time.monotonic() + 60
    while not (healthy(enqueue + "/healthz") and healthy(status + "/healthz")):
        if time.monotonic() > deadline:
            sys.exit("the functions did not become healthy within 60 s")
        time.sleep(0.2)  # polling another process's port until it is up
    channel = f", Kafka at {s.kafka_bootstrap_servers}" if s.channel == "kafka" else ""
    print(
        f"""ready: enqueue on {enqueue}, status on {status}, Redis at {s.redis_url}{channel}
  curl -s -X POST {enqueue}/tasks -H 'Content-Type: application/json' \\
       -d '{{"type": "echo", "payload": {{"hello": "world"}}}}'
  curl -s '{status}/tasks/<id>?wait=10'
  python -m local send-webhook github push   (a signed sample; also stripe, standard, slack, shopify)
Ctrl-C stops everything.""",
        flush=True,
    )
    signal.pause()


if __name__ == "__main__":
    main()
