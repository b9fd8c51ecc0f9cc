"""What the operator measures about itself: Prometheus metrics, health and readiness."""
