"""The configuration layer: `values` (frozen dataclasses), `load` (YAML -> Config, every
validation, key-path errors; `reader` is its typed YAML walker), `diff` (what changed
between two, and a secret-free plain view)."""
