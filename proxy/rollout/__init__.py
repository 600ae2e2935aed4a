"""The rules, as pure functions with the clock injected: routing (who goes where), fallback
(whether to replay on legacy), guard and window (automatic rollback), stages (the plan and
its promotion criteria), compare (shadow answers),
analysis and counters (the autopilot's verdict and the figures it judges). No I/O here."""
