"""What ``/proc`` says of processes on this machine: CPU, waits for a CPU, memory.

For benchmarks that compare where the time of a run went. CPU seconds come from
``/proc/<pid>/stat`` (user + system, the whole thread group, exited threads
included); the seconds spent runnable but waiting for a CPU from each thread's
``/proc/<pid>/task/<tid>/schedstat`` (second field, nanoseconds: the threads alive
when read); memory from ``/proc/<pid>/status`` (``VmHWM`` is the peak resident
set, shared memory the process touched included). A process that is gone reads
as nothing rather than failing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
MEMORY_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssShmem")


@dataclass(frozen=True)
class Usage:
    """CPU seconds used and seconds spent waiting for a CPU, so far."""

    cpu: float = 0.0
    queued: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu + other.cpu, self.queued + other.queued)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu - other.cpu, self.queued - other.queued)


def usage(pid: int) -> Usage:
    """``pid``'s CPU and run-queue seconds so far; zero when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return Usage()
    queued = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                queued += int(Path(task.path, "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        pass
    return Usage(cpu, queued / 1e9)


def total_usage(pids: Iterable[int]) -> Usage:
    found = Usage()
    for pid in pids:
        found += usage(pid)
    return found


def usages(pids: Iterable[int]) -> dict[int, Usage]:
    return {pid: usage(pid) for pid in pids}


def used_since(before: dict[int, Usage], after: dict[int, Usage]) -> Usage:
    """What the processes of ``after`` used since ``before``; one not in ``before``
    started meanwhile and counts whole."""
    found = Usage()
    for pid, now in after.items():
        found += now - before.get(pid, Usage())
    return found


def memory(pid: int) -> dict[str, float]:
    """``MEMORY_FIELDS`` of ``pid`` in MB (those it has); empty when it is gone."""
    found: dict[str, float] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            found[key] = int(value.split()[0]) / 1024  # kB
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, by parent id."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Machine:
    """The machine's CPU seconds so far, all cores together (``/proc/stat``)."""

    busy: float
    steal: float
    total: float

    def __sub__(self, other: Machine) -> Machine:
        return Machine(self.busy - other.busy, self.steal - other.steal, self.total - other.total)


def machine() -> Machine:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice (guest is in user)
    idle, steal = fields[3] + fields[4], fields[7]
    total = sum(fields[:8])
    return Machine((total - idle - steal) / TICKS, steal / TICKS, total / TICKS)


def cores() -> int:
    return os.cpu_count() or 1


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
