"""The lines and the table :mod:`bench.scale_ingest` prints.

Each run's numbers (a dict): ``wall`` seconds from the rename of the stream to the
last entry stored; ``used``, the :class:`bench.procstat.Usage` (CPU seconds, and
seconds runnable but waiting for a CPU) of ``consumers``, ``backends`` (the run's
PostgreSQL backends), ``aux`` (the server's own processes) and ``redis``;
``machine``, the machine's CPU seconds over the run; ``own``, the benchmark's;
``others``, the rest of the machine's busy time; ``activity``, the run's backends
as sampled from ``pg_stat_activity``; ``memory``, peaks of its processes.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from bench import procstat

TARGET = 1.6
"""Issue 18: two consumers at least 1.6 times one."""


def _cpu(found: dict[str, Any], part: str) -> float:
    return float(found["used"][part].cpu)


def _queued(found: dict[str, Any], part: str) -> float:
    return float(found["used"][part].queued)


def shares(activity: dict[str, int], top: int = 5) -> str:
    total = sum(activity.values())
    if not total:
        return ""
    ranked = Counter(activity).most_common(top)
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in ranked)


def run_line(label: str, found: dict[str, Any], events: int) -> str:
    wall = found["wall"]
    line = (
        f"{label:<24} {events / wall:8.0f} events/s ({wall:6.2f} s) | CPU s: consumers"
        f" {_cpu(found, 'consumers'):.1f} (+{_queued(found, 'consumers'):.1f} waiting for a CPU)"
    )
    if found["activity"]:
        line += (
            f", postgres backends {_cpu(found, 'backends'):.1f}"
            f" (+{_queued(found, 'backends'):.1f}), server {_cpu(found, 'aux'):.1f}"
        )
    line += (
        f", redis {_cpu(found, 'redis'):.1f}, everything else {found['others']:.1f};"
        f" machine {found['machine'].busy:.1f} of {procstat.cores() * wall:.1f} core-s busy"
        f" (steal {found['machine'].steal:.1f}); load {found['load'][0]} -> {found['load'][1]}"
    )
    if found["activity"]:
        line += f"\n    backends sampled: {shares(found['activity'])}"
    return line


def _median(runs: list[dict[str, Any]], value: Any) -> float:
    return float(statistics.median(value(r) for r in runs))


def _per_event(runs: list[dict[str, Any]], part: str, events: int) -> float:
    return _median(runs, lambda r: _cpu(r, part) / events * 1e6)


def table(result: dict[str, Any], configs: list[Any]) -> list[str]:
    events = result["stream"]["events"]
    lines = [
        f"{'configuration':<24} {'events/s':>9} {'(min-max)':>15}  CPU us/event: {'consumers':>9}"
        f" {'backends':>8} {'server':>6} {'redis':>5}  {'others':>6}  {'CPU waits':>9}",
    ]
    for config in configs:
        runs = result["results"][config.name]
        rates = [events / r["wall"] for r in runs]
        waits = _median(
            runs, lambda r: (_queued(r, "consumers") + _queued(r, "backends")) / r["wall"]
        )
        lines.append(
            f"{config.label:<24} {statistics.median(rates):9.0f}"
            f" {f'({min(rates):.0f}-{max(rates):.0f})':>15}  {'':>13} "
            f"{_per_event(runs, 'consumers', events):9.1f}"
            f" {_per_event(runs, 'backends', events):8.1f} {_per_event(runs, 'aux', events):6.1f}"
            f" {_per_event(runs, 'redis', events):5.1f}"
            f"  {_median(runs, lambda r: r['others'] / r['wall']):6.2f}  {waits:9.2f}"
        )
    lines.append(
        "  (others: cores busy with everything else on the machine, on average; CPU waits:"
        " the consumers' and backends' threads runnable but waiting for a CPU, on average)"
    )
    return lines


def ratios(result: dict[str, Any], names: set[str]) -> list[str]:
    events, results = result["stream"]["events"], result["results"]

    def rate(name: str) -> float:
        return _median(results[name], lambda r: events / r["wall"])

    def paired(top: str, bottom: str) -> float:
        pairs = zip(results[top], results[bottom], strict=True)
        return float(statistics.median(b["wall"] / t["wall"] for t, b in pairs))

    lines = []
    for top, bottom in (("pg-2", "pg-1"), ("pg-1", "sqlite"), ("pg-2", "sqlite")):
        if top in names and bottom in names:
            lines.append(
                f"{top}/{bottom}: {rate(top) / rate(bottom):.2f} (median of each round's own:"
                f" {paired(top, bottom):.2f})"
                + (
                    f" {'meets' if rate(top) / rate(bottom) >= TARGET else 'BELOW'} the target"
                    f" {TARGET}"
                    if (top, bottom) == ("pg-2", "pg-1")
                    else ""
                )
            )
    return lines


def _lock_share(runs: list[dict[str, Any]]) -> float:
    """Of the run's backends sampled, the share waiting for another transaction's lock
    (a row or transaction lock; not the short LWLocks of the server's own structures)."""
    total: Counter[str] = Counter()
    for r in runs:
        total.update(r["activity"])
    locked = sum(n for name, n in total.items() if name.startswith("Lock:"))
    return locked / max(1, sum(total.values()))


def _chain(config: Any, runs: list[dict[str, Any]], events: int) -> str:
    n = max(1, config.consumers)
    busy = _median(runs, lambda r: _cpu(r, "consumers") / r["wall"] / n)
    queued = _median(
        runs, lambda r: (_queued(r, "consumers") + _queued(r, "backends")) / r["wall"] / n
    )
    ours = _median(runs, lambda r: sum(u.cpu for u in r["used"].values()) / r["wall"])
    free = _median(runs, lambda r: procstat.cores() - (r["others"] + r["own"]) / r["wall"])
    text = f"  {config.label}: each consumer on a CPU {100 * busy:.0f}% of the run"
    if config.postgres:
        backend = _median(runs, lambda r: _cpu(r, "backends") / r["wall"] / n)
        text += f", its backend {100 * backend:.0f}%"
    return text + (
        f", the two runnable but waiting for a CPU {100 * queued:.0f}%; the run's processes"
        f" used {ours:.2f} cores of the {free:.2f} everything else left"
    )


def projection(result: dict[str, Any], configs: list[Any]) -> list[str]:
    """Where the time went, and what cores to spare would give (an estimate: see the lines)."""
    events, results = result["stream"]["events"], result["results"]
    lines = ["where the time went (medians):"]
    lines += [_chain(config, results[config.name], events) for config in configs]
    if "pg-1" not in results or "pg-2" not in results:
        return lines
    one, two = results["pg-1"], results["pg-2"]
    consumer = _per_event(one, "consumers", events)
    backend = _per_event(one, "backends", events)
    serial = 1e6 / (consumer + backend)
    overlapped = 1e6 / max(consumer, backend)
    locks1, locks2 = _lock_share(one), _lock_share(two)
    ratio = 2 * (1 - locks2) / max(1e-9, 1 - locks1)
    cost = _median(two, lambda r: sum(u.cpu for u in r["used"].values()) / events * 1e6)
    cores = procstat.cores()
    return [
        *lines,
        f"  with a core for each process: one consumer's chain (consumer {consumer:.0f} us"
        f" then backend {backend:.0f} us of CPU an event) gives {serial:.0f} events/s if the"
        f" two never overlap, up to {overlapped:.0f} if they always did; two consumers twice"
        f" that, less the time their backends wait for each other's locks (sampled: pg-1"
        f" {100 * locks1:.0f}%, pg-2 {100 * locks2:.0f}% of the time): pg-2/pg-1 about"
        f" {ratio:.2f}",
        f"  CPU per event with two consumers, every process of the run: {cost:.0f} us, so"
        f" {cores} cores with nothing else on them carry at most {cores * 1e6 / cost:.0f}"
        " events/s whatever the number of consumers",
    ]


def memory(result: dict[str, Any], configs: list[Any]) -> list[str]:
    lines = ["peak memory (VmHWM, MB; max over rounds):"]
    for config in configs:
        runs = result["results"][config.name]
        consumer = max((m.get("VmHWM", 0.0) for r in runs for m in r["memory"]["consumers"]),
                       default=0.0)  # fmt: skip
        text = f"  {config.label}: each consumer process {consumer:.0f}"
        parents = [r["memory"]["parent"] for r in runs if r["memory"]["parent"]]
        if parents:
            text += f" (the --consumers parent {max(p.get('VmHWM', 0.0) for p in parents):.0f})"
        backends = [m for r in runs for m in r["memory"]["backends"]]
        if backends:
            text += (
                f"; each PostgreSQL backend {max(m.get('VmHWM', 0.0) for m in backends):.0f}"
                f" of which private (RssAnon, at the end)"
                f" {max(m.get('RssAnon', 0.0) for m in backends):.0f}, shared buffers touched"
                f" (RssShmem) {max(m.get('RssShmem', 0.0) for m in backends):.0f}"
            )
        lines.append(text)
    return lines


def report(result: dict[str, Any], configs: list[Any]) -> str:
    events = result["stream"]["events"]
    names = {c.name for c in configs}
    rounds = len(result["results"][configs[0].name])
    activity = []
    for config in configs:
        if config.postgres:
            total: Counter[str] = Counter()
            for r in result["results"][config.name]:
                total.update(r["activity"])
            activity.append(f"  {config.label}: {shares(dict(total), 8)}")
    return "\n".join(
        [
            f"medians of {rounds} interleaved rounds, {events} events each, {result['tasks']}"
            f" tasks stored by every run; {procstat.cores()} cores",
            *table(result, configs),
            *ratios(result, names),
            *(["PostgreSQL backends of the run, sampled every 100 ms:"] if activity else []),
            *activity,
            *projection(result, configs),
            *memory(result, configs),
        ]
    )
