"""What the process tells the outside: Prometheus metrics on an app-owned registry, logs."""
