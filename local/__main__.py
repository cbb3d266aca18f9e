"""`python -m local` (`make up`) and `python -m local send-webhook`: the command line only;
`local.stack` runs the stack and `local.webhook_samples` signs the samples. Nothing heavy is
imported before the arguments are parsed, so `--help` starts and touches nothing."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Run taskbus on this machine: an embedded Valkey (unless REDIS_URL is set), the enqueue
function, the status function, the console and one worker, their logs prefixed by service.
The console's admin key is generated into LOCAL_RUN_DIR/admin-key unless ADMIN_KEYS or
ADMIN_KEYS_FILE is set. It prints
`ready` once every service answers; Ctrl-C stops the functions, then the worker (it finishes
its in-flight tasks for up to GRACE_S), then the servers.

environment:
  LOCAL_RUN_DIR     run directory: server data, webhook secrets, the admin key, the lock (default: .run/)
  LOCAL_REDIS_PORT  port of the embedded Valkey (default: 6399)
  LOCAL_CLUSTER     true: an embedded Redis Cluster instead (3 masters + 3 replicas on
                    LOCAL_REDIS_PORT and the next 5 ports, bus ports 10000 above); also REDIS_CLUSTER=true
  LOCAL_KAFKA_PORT  port of the embedded Kafka broker with CHANNEL=kafka (default: 19092)
  ENQUEUE_PORT, STATUS_PORT, CONSOLE_PORT, REDIS_URL, CHANNEL, ...: as in the README's Configuration
"""

SEND_DESCRIPTION = """\
Sign a sample delivery with the running stack's webhook secret and POST it to its
/hooks/<source>. The stack's port and secrets are read from its run directory (LOCAL_RUN_DIR,
default .run/), so this works from any terminal."""


def parser() -> argparse.ArgumentParser:
    from local.webhook_samples import DEFAULT_EVENTS, SOURCES

    top = argparse.ArgumentParser(prog="python -m local", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", metavar="{send-webhook}")
    send = commands.add_parser("send-webhook", help="post a signed sample webhook to the running stack",
                               description=SEND_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    send.add_argument("source", help=f"a webhook source of the stack: {', '.join(SOURCES)} with make up's defaults")
    send.add_argument("event", nargs="?", default=None,
                      help="the event to sample (default per scheme: "
                           + ", ".join(f"{k} {v}" for k, v in DEFAULT_EVENTS.items()) + ")")
    return top


def main(args: list[str]) -> int:
    options = parser().parse_args(args)
    if options.command == "send-webhook":
        from local.webhook_samples import send_to_stack

        return send_to_stack(options.source, options.event, os.environ)
    from local.stack import up

    return up(os.environ)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
