"""The `rollout` command: cli (the parser and the process commands), moves (editing
commands), views (read-only ones), client (the admin listener's), figures (from the admin
listener or Prometheus), prometheus (its query API), sources (the autopilot's counter
reads), edit (comment-keeping YAML edits), history, console, smoke."""
