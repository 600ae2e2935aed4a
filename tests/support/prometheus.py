"""A real Prometheus server for tests: the Debian `prometheus` binary on loopback.

`PrometheusServer` writes a config (1 s scrape and evaluation interval, the given admin
listeners as targets of one job, optional rule files), starts `prometheus` on a free
127.0.0.1 port with its TSDB and log in a tmp directory, and waits for `/-/ready`.
It needs no network: no remote read/write, no alertmanager, no service discovery.
Every wait is bounded and fails with what Prometheus said (its log, the targets' errors).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support import HOST, free_port

PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB = "rollout-proxy"  # the job name the alert rules select on
SCRAPE_INTERVAL_S = 1.0


class PrometheusError(RuntimeError):
    """Prometheus could not be started, did not answer, or refused a query."""


class PrometheusServer:
    """One Prometheus process; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (),
        bearer_token: str | None = None,
        binary: str = PROMETHEUS_BIN,
    ) -> None:
        self.workdir = workdir
        self.targets = list(targets)
        self.rule_files = [Path(p) for p in rule_files]
        self.bearer_token = bearer_token
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self._log: Any = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> dict[str, Any]:
        job: dict[str, Any] = {
            "job_name": JOB,
            "metrics_path": "/metrics",
            "scrape_interval": f"{SCRAPE_INTERVAL_S:g}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_S:g}s",
            "static_configs": [{"targets": self.targets}],
        }
        if self.bearer_token:
            job["authorization"] = {"type": "Bearer", "credentials": self.bearer_token}
        data: dict[str, Any] = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S:g}s",
            },
            "scrape_configs": [job],
        }
        if self.rule_files:
            data["rule_files"] = [str(p.resolve()) for p in self.rule_files]
        return data

    def start(self, *, timeout: float = 30.0, attempts: int = 3) -> PrometheusServer:
        """Start and wait for `/-/ready`; a port lost to a race is retried on another."""
        if not Path(self.binary).exists():
            raise PrometheusError(f"no prometheus binary at {self.binary}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            data_dir = self.workdir / f"data-{self.port}"
            self._log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={data_dir}",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=info",
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(timeout):
                return self
            last = self.logs()
            self.stop()
            if "address already in use" not in last:
                break
        raise PrometheusError(f"Prometheus did not become ready:\n{last[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL if it will not stop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def logs(self) -> str:
        if self._log is not None:
            self._log.flush()
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- HTTP API -------------------------------------------------------------------

    def api(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON answer of `/api/v1/<path>`, error answers (4xx/5xx) included."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except OSError as exc:
            raise PrometheusError(f"GET {url}: {exc}\n{self.logs()[-2000:]}") from exc
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError as exc:
            raise PrometheusError(f"GET {url}: not JSON: {body[:500]!r}") from exc
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query now; the result list, or PrometheusError with Prometheus's reason."""
        data = self.api("query", {"query": expr})
        if data.get("status") != "success":
            raise PrometheusError(f"query {expr!r}: {data.get('errorType')}: {data.get('error')}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        data = self.api("alerts")
        if data.get("status") != "success":
            raise PrometheusError(f"alerts: {data.get('error')}")
        alerts: list[dict[str, Any]] = data["data"]["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        """Rule groups as `/api/v1/rules` gives them (each rule has health, lastError)."""
        data = self.api("rules")
        if data.get("status") != "success":
            raise PrometheusError(f"rules: {data.get('error')}")
        groups: list[dict[str, Any]] = data["data"]["groups"]
        return groups

    def target_health(self) -> list[dict[str, Any]]:
        data = self.api("targets", {"state": "active"})
        targets: list[dict[str, Any]] = data.get("data", {}).get("activeTargets", [])
        return [
            {k: t.get(k) for k in ("scrapeUrl", "health", "lastScrape", "lastError")}
            for t in targets
        ]

    # --- waiting for data -----------------------------------------------------------

    def wait_for_scrapes(
        self, n: int = 1, *, after: float | None = None, timeout: float | None = None
    ) -> None:
        """Wait until every target has `n` successful scrapes that started after `after`.

        `after` is a wall-clock time (default: now). A scrape counts once its samples are
        queryable: it is seen through `timestamp(up)`, which only moves when the scrape's
        samples are committed, so every counter value read at that scrape is in the TSDB.
        """
        after = time.time() if after is None else after
        timeout = timeout if timeout is not None else 10.0 + 3 * n * SCRAPE_INTERVAL_S
        instances = set(self.targets)
        seen: dict[str, set[float]] = {i: set() for i in instances}
        up: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while True:
            for row in self.query(f'timestamp(up{{job="{JOB}"}})'):
                instance = row["metric"].get("instance", "")
                ts = float(row["value"][1])
                if instance in seen and ts > after:
                    seen[instance].add(ts)
            up = {
                r["metric"].get("instance", ""): float(r["value"][1])
                for r in self.query(f'up{{job="{JOB}"}}')
            }
            if all(len(seen[i]) >= n and up.get(i) == 1.0 for i in instances):
                return
            if time.monotonic() > deadline:
                counts = {i: len(s) for i, s in seen.items()}
                raise PrometheusError(
                    f"fewer than {n} successful scrapes per target within {timeout:g} s: "
                    f"scrapes seen {counts}, up {up}, targets {self.target_health()}"
                )
            time.sleep(0.1)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: Sequence[str], **kwargs: Any
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(workdir, targets, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()
