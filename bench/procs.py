"""Processes the benchmark starts, and what /proc says about them.

Every process runs in its own session (so its own process group): Ctrl-C in the terminal
does not reach it, and stopping a group also stops nginx workers or any proxy workers.
CPU time comes from /proc/PID/stat (utime, stime), peak memory from VmHWM in
/proc/PID/status, per-core time from /proc/stat; see proc(5).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Everything the benchmark started and has not stopped yet."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Service] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        cpus: str | None,
        env: dict[str, str] | None = None,
    ) -> Service:
        """Start `argv` pinned to `cpus` (taskset execs, so the pid is the program's)."""
        command = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                env=env,
            )
        service = Service(name, proc, log)
        self.started.append(service)
        return service

    def stop(self, service: Service, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after `timeout` (and any straggler regardless)."""
        proc = service.proc
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _killpg(proc.pid, signal.SIGKILL)  # the group id is the leader's pid
        if service in self.started:
            self.started.remove(service)

    def stop_all(self) -> None:
        for service in reversed(list(self.started)):
            try:
                self.stop(service)
            except Exception as exc:  # keep cleaning up the others
                print(f"cleanup: {service.name}: {exc}", file=sys.stderr)


def _killpg(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name; index 0 is field 3 of proc(5)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_ticks(pids: Sequence[int]) -> tuple[int, int]:
    """(utime, stime) summed over the processes, in clock ticks."""
    user = system = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user, system


def _status_kib(pid: int, key: str) -> int:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pids: Sequence[int]) -> int:
    """VmHWM summed over the processes (an upper bound when there are several)."""
    return sum(_status_kib(pid, "VmHWM") for pid in pids)


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Set VmHWM back to the current RSS (clear_refs "5"), so a run reports its own peak."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


@dataclass(frozen=True)
class CoreTime:
    """One CPU's counters from /proc/stat, in clock ticks."""

    task: int  # user + nice + system: time spent in processes
    irq: int  # irq + softirq: loopback packet processing lands here too
    steal: int  # taken by the hypervisor
    total: int

    @classmethod
    def read(cls, core: int) -> CoreTime:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
                return cls(
                    task=user + nice + system,
                    irq=irq + softirq,
                    steal=steal,
                    total=user + nice + system + idle + iowait + irq + softirq + steal,
                )
        raise LookupError(f"cpu{core} not in /proc/stat")

    def __sub__(self, other: CoreTime) -> CoreTime:
        return CoreTime(
            self.task - other.task,
            self.irq - other.irq,
            self.steal - other.steal,
            self.total - other.total,
        )

    def pct(self, ticks: int) -> float:
        return 100 * ticks / self.total if self.total > 0 else 0.0
