"""Telemetry: Prometheus metrics (`metrics`), and traces and Cloud Logging fields (`tracing`);
each costs next to nothing while off."""
