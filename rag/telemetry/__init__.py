"""What Scribes tells its operators: Prometheus metrics (`metrics`, `collectors`,
`exposition`) and OpenTelemetry traces (`tracing`)."""
