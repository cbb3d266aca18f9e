"""The worker function: `python -m worker_fn` runs the handlers of `HANDLERS` (default
`worker_fn.handlers`) against the queues in `QUEUES`."""
