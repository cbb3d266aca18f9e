"""Telemetry: Prometheus metrics (`metrics`) and OpenTelemetry traces (`tracing`), each off-cost near zero."""
