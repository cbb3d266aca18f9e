"""Telemetry: Prometheus metrics (`metrics`), and traces and Cloud Logging fields (`tracing`)."""
