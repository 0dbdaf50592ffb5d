"""CPU time and peak RSS of a process and its descendants, and how the whole machine's CPU was
spent meanwhile, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    name: str
    cpu_seconds: float  # user + system since the process started
    peak_rss_mb: float  # VmHWM: the resident high-water mark


_CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine() -> dict[str, int]:
    """Cumulative CPU ticks of the whole machine, by state (the ``cpu`` line of /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return {state: int(ticks) for state, ticks in zip(_CPU_STATES, fields, strict=False)}


def machine_share(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Percent of the machine's CPU per state between two readings. ``nice`` is other people's
    low-priority jobs, ``steal`` the hypervisor's other guests: a benchmark that shared its cores
    says so in its results."""
    spent = {state: after[state] - before[state] for state in before}
    total = sum(spent.values()) or 1
    return {state: round(100 * ticks / total, 1) for state, ticks in spent.items()}


def tree(root: int) -> list[ProcessStat]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    pids, stats = [root], []
    while pids:
        pid = pids.pop()
        pids.extend(children.get(pid, []))
        if (stat := _stat(pid)) is not None:
            stats.append(stat)
    return stats


def named(*names: str) -> list[ProcessStat]:
    """Every live process whose command name is one of ``names`` (a server started outside the
    benchmark, such as Postgres with its backends)."""
    stats = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in names and (stat := _stat(int(entry.name))):
                stats.append(stat)
        except OSError:
            continue
    return stats


def _fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): state, ppid, …"""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def _stat(pid: int) -> ProcessStat | None:
    try:
        fields = _fields(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), "0")
    return ProcessStat(pid, cmdline[:120], (int(fields[11]) + int(fields[12])) / _TICKS, int(hwm) / 1024)


def usage(before: list[ProcessStat], after: list[ProcessStat]) -> list[dict[str, object]]:
    """Per process: CPU seconds spent between the two readings, and the peak RSS."""
    start = {stat.pid: stat.cpu_seconds for stat in before}
    return [
        {"pid": s.pid, "cmd": s.name, "cpu_seconds": round(s.cpu_seconds - start.get(s.pid, 0.0), 2), "peak_rss_mb": round(s.peak_rss_mb, 1)}
        for s in after
    ]
