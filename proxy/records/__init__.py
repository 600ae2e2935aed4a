"""The files beside the config: the change log (`rollout-history.jsonl`), the autopilot's
state (`rollout-autopilot.json`) and its lock, and the atomic write they and the config
share. Read by the admin listener (the status page) and the CLI, written by the CLI."""
