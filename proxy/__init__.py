"""rollout-proxy: a session-sticky gateway for a gradual migration from a legacy API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rollout-proxy")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
