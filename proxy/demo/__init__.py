"""`rollout demo`: sample signal and legacy APIs (apis) and the proxy in front (run)."""
