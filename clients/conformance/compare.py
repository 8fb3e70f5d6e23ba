"""Compares every SDK's verdicts on the conformance vectors, and prints one table (case by SDK).

Each SDK's runner writes one JSON object per line: {"name": case, "verdict": accept or the
refusal kind, "sub": the accepted token's sub}. A verdict that differs from the expected one,
or between SDKs, fails.

Usage: python compare.py VECTORS.json SDK=RESULTS.jsonl [SDK=RESULTS.jsonl ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def results(path: Path) -> dict[str, dict]:
    lines = (line for line in path.read_text().splitlines() if line.strip())
    return {entry["name"]: entry for entry in map(json.loads, lines)}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    vectors = json.loads(Path(sys.argv[1]).read_text())["vectors"]
    sdks = {}
    for argument in sys.argv[2:]:
        name, _, path = argument.partition("=")
        sdks[name] = results(Path(path))
    width = max(len(v["name"]) for v in vectors)
    print(f"{'case':<{width}}  {'expected':<24}" + "".join(f"{sdk:<24}" for sdk in sdks))
    failures = []
    for vector in vectors:
        expected = vector["verdict"]
        row = f"{vector['name']:<{width}}  {expected:<24}"
        for sdk, answers in sdks.items():
            answer = answers.get(vector["name"])
            verdict = answer["verdict"] if answer else "(no answer)"
            wrong = verdict != expected
            if not wrong and expected == "accept":
                wrong = answer.get("sub") != vector["claims"].get("sub")
            row += f"{verdict + (' !' if wrong else ''):<24}"
            if wrong:
                failures.append(f"{sdk}: {vector['name']}: expected {expected}, got {answer}")
        print(row)
    print(f"{len(vectors)} cases x {len(sdks)} SDKs: {len(failures)} differ")
    for failure in failures:
        print(f"compare: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
