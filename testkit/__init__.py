"""What the tests, the chaos suite and the bench share to drive taskbus from outside:

- `procs`: `Proc` (a child in its own process group), `spawn`, `stop`, `wait_until`,
  `wait_healthy` (the one /healthz poll);
- `env`: `env_of(settings)`, `clean_env()` (a child sees only the settings it is given);
- `settings`: `FAST` and `kafka_settings(broker)`, overlays that make runs react quickly;
- `functions`: `start_functions` / `function_pair`, the enqueue and status functions on fresh ports;
- `client`: what tests ask of a running system (enqueue, status, finished, executions,
  Kafka's `read_topic` and committed offsets);
- `signing`: one signer per webhook scheme, and the providers' published test vectors.

The embedded servers themselves live in `local.embedded` (`make up` needs them too).
"""
