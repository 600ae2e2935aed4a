"""The `rollout` command: cli (the parser and the process commands), moves (editing
commands), views (read-only ones), client (the admin listener's), figures (from the admin
listener or Prometheus), edit (comment-keeping YAML edits), history, console, smoke."""
