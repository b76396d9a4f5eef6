"""``python -m bench.multinode``: the multi-node scenarios (tests/test_multinode.py: three
``reelhook serve`` on PostgreSQL behind Caddy, the simulator calling back through Caddy, S3 on
moto, subscriber sinks) at the issue's size, a SIGKILL at 30 % of a 20,000-delivery fan-out,
then every scenario's ledger as a table, written to ``bench/results/multinode.{md,jsonl}``.

The scenarios are the test suite's own (run by pytest, one process, loopback only); only the
fan-out's size changes (``REELHOOK_MULTINODE_DELIVERIES``). A scenario whose ledger does not
balance fails its test, and the run exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

LEDGER_FILE = "multinode-ledgers.jsonl"  # tests/multinode.py writes it in pytest's base temp
COLUMNS = ("sent", "acknowledged", "expected", "delivered", "duplicates", "lost")


def markdown(ledgers: list[dict[str, Any]], deliveries: int, passed: bool) -> str:
    lines = [
        f"# Multi-node scenarios (fan-out of {deliveries:,} deliveries)",
        "",
        "Three `reelhook serve` on one PostgreSQL behind Caddy; see tests/test_multinode.py.",
        f"pytest: {'passed' if passed else 'FAILED'}.",
        "",
        "| scenario | " + " | ".join(COLUMNS) + " | balanced | detail |",
        "|---|" + "---|" * len(COLUMNS) + "---|---|",
    ]
    for ledger in ledgers:
        figures = " | ".join(f"{ledger[name]:,}" for name in COLUMNS)
        detail = ", ".join(f"{key} {value}" for key, value in ledger["detail"].items())
        balanced = "yes" if ledger["balanced"] else "**no**"
        lines.append(f"| {ledger['scenario']} | {figures} | {balanced} | {detail} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multinode", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=20_000, help="size of the fan-out")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("-k", default="", help="only the scenarios pytest -k selects")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reelhook-multinode-") as work:
        basetemp = Path(work) / "pytest"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            f"--basetemp={basetemp}",
            "--store",
            "postgresql",
            "tests/test_multinode.py",
        ]
        if args.k:
            command += ["-k", args.k]
        env = {**os.environ, "REELHOOK_MULTINODE_DELIVERIES": str(args.deliveries)}
        passed = subprocess.run(command, env=env, check=False).returncode == 0
        found = basetemp / LEDGER_FILE
        ledgers = (
            [json.loads(line) for line in found.read_text().splitlines()] if found.exists() else []
        )
    report = markdown(ledgers, args.deliveries, passed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multinode.md").write_text(report)
    (args.out / "multinode.jsonl").write_text("".join(json.dumps(x) + "\n" for x in ledgers))
    print(report)
    if not passed or not all(ledger["balanced"] for ledger in ledgers):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
