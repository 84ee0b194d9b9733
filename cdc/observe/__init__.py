"""Metrics, the sampler, the health endpoints, logs and trace context."""
