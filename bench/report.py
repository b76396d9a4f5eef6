"""The benchmark report: machine, versions, figures with baselines and ratios, ledgers."""

from __future__ import annotations

import os
import platform
import sqlite3
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

PACKAGES = ("starlette", "uvicorn", "httptools", "uvloop", "aiosqlite", "aiohttp", "httpx")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    found.update({name: version(name) for name in PACKAGES})
    return found


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "x":  # a multiple, near 1: two decimals say how steady it is
        return f"{value:.2f}x"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def _cpu(per_item: dict[str, float]) -> str:
    """``reelhook 150 (loop 110 + threads 40) · load 60 · sink 30``; — when not measured.
    A process measured per thread (reelhook, the floor) is split into its loop and the rest."""
    if not per_item:
        return "—"
    parts = []
    for name, value in per_item.items():
        if name.endswith((" loop", " threads")):
            continue
        text = f"{name} {value:,.0f}"
        if f"{name} loop" in per_item:
            text += (
                f" (loop {per_item[f'{name} loop']:,.0f} + "
                f"threads {per_item[f'{name} threads']:,.0f})"
            )
        parts.append(text)
    return " · ".join(parts)


def markdown(result: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result["started_at"]))
    box = result["machine"]
    lines = [
        "# reelhook benchmark report"
        + (" (quick smoke run, not a measurement)" if result["quick"] else ""),
        "",
        f"Run {when}, {result['duration_s']:.0f} s, by `make bench`. Every ratio is against a bare",
        "baseline measured in the same run on the same machine; all traffic on 127.0.0.1.",
        "",
        f"Machine: {box['cpus']} CPUs ({box['cpu']}), {box['memory_gib']} GiB RAM,"
        f" Linux {box['kernel']}.",
        "Data disk 1 KiB write + fdatasync: "
        f"p50 {result['fsync']['p50_us']:.0f} µs, p99 {result['fsync']['p99_us']:.0f} µs.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        *(
            [
                f"**Incomplete run**: stopped by {result['failed']}; the figures below are those",
                "measured before it.",
                "",
            ]
            if result.get("failed")
            else []
        ),
        "CPU µs per item is read from /proc for each process (reelhook split into its event-loop",
        "thread and its other threads, mostly aiosqlite's); it moves far less than throughput when",
        "neighbours share the machine.",
        "",
        "| figure | reelhook | bare baseline | ratio | CPU µs/item | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for figure in result["figures"]:
        ratio = f"{figure['ratio'] * 100:.0f} %" if figure["ratio"] is not None else "—"
        lines.append(
            f"| {figure['name']} | {_number(figure['value'], figure['unit'])} | "
            f"{_number(figure['baseline'], figure['unit'])} | {ratio} | "
            f"{_cpu(figure.get('cpu_us') or {})} | {figure['target']} | "
            f"{'yes' if figure['met'] else '**no**'} |"
        )
    capped = [f for f in result["figures"] if f.get("baseline_cap")]
    if capped:
        lines += ["", "## What caps each bare baseline", ""]
        for figure in capped:
            lines.append(
                f"- {figure['name']}: {_number(figure['baseline'], figure['unit'])}, capped by "
                f"{figure['baseline_cap']}; CPU µs/item {_cpu(figure['baseline_cpu_us'])}."
            )
    missed = [f for f in result["figures"] if not f["met"]]
    if missed:
        lines += ["", "## Targets missed, and by how much", ""]
        for figure in missed:
            share = figure["ratio"]
            ratio = f", {share * 100:.0f} % of bare" if share is not None else ""
            lines.append(
                f"- {figure['name']}: {_number(figure['value'], figure['unit'])}{ratio}; "
                f"the target is {figure['target']}."
            )
    if result["rss_under_load_mb"]:
        lines += [
            "",
            f"Peak RSS of reelhook across scenarios 1-3 and 5: "
            f"{result['rss_under_load_mb']:.0f} MiB.",
        ]
    lines += [
        "",
        "## Ledgers",
        "",
        "| scenario | counts | balanced |",
        "|---|---|---|",
    ]
    for ledger in result["ledgers"]:
        counts = ", ".join(f"{k} {v:,}" for k, v in ledger["entries"].items())
        verdict = "yes" if ledger["balanced"] else "**no — void**"
        lines.append(f"| {ledger['scenario']} | {counts} | {verdict} |")
    return "\n".join(lines) + "\n"
