"""One table from the SDK benches' results (scripts/bench_sdks.sh): verify() throughput of
each SDK against its bare JOSE library, then the memory of held key sets, as Markdown.

Usage: python report.py RESULTS.json...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ALGORITHMS = ("RS256", "ES256", "EdDSA")


def _ops(value: float) -> str:
    return f"{value:,.0f}"


def report(files: list[Path]) -> str:
    metas: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    for file in files:
        rows = json.loads(file.read_text())
        for row in rows:
            kind = row.get("kind")
            (metas if kind == "meta" else memory if kind == "memory" else speed).append(row)
    lines = [
        "| SDK | verify path | alg | SDK ops/s | bare ops/s | ratio (median) | ratio min-max |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    order = {sdk: index for index, sdk in enumerate(meta["sdk"] for meta in metas)}
    speed.sort(
        key=lambda row: (
            order.get(row["sdk"], 99),
            "sets held" in row["path"],
            ALGORITHMS.index(row["alg"]) if row["alg"] in ALGORITHMS else 99,
        )
    )
    for row in speed:
        lines.append(
            f"| {row['sdk']} | {row['path']} | {row['alg']} | {_ops(row['sdk_ops'])} "
            f"| {_ops(row['bare_ops'])} | {row['ratio']:.2f} "
            f"| {row['ratio_min']:.2f}-{row['ratio_max']:.2f} |"
        )
    lines += ["", "| SDK | bare library | runtime | rounds x batch |", "|---|---|---|---|"]
    for meta in metas:
        lines.append(
            f"| {meta['sdk']} | {meta['library']} | {meta['runtime']} "
            f"| {meta['rounds']} x {meta['seconds_per_batch']} s ({meta['clock']} clock) |"
        )
    lines += [
        "",
        "| SDK | key sets held | bytes per key set (2 keys) | measured as |",
        "|---|---:|---:|---|",
    ]
    for row in memory:
        measured = f"{row['bytes_per_set']:,.0f}"
        if "structure_bytes_per_set" in row:
            measured += f" ({row['structure_bytes_per_set']:,.0f} in the structure)"
        lines.append(f"| {row['sdk']} | {row['sets']:,} | {measured} | {row['method']} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(report([Path(name) for name in sys.argv[1:]]))


if __name__ == "__main__":
    main()
