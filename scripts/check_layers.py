"""Checks that keyrelay's subsystems depend on each other one way only.

Every module under src/ belongs to the subsystem named by its first path component (the
folder, or the file at the top of src/). A subsystem may use those listed after it in
LAYERS, never one listed before it, nor one of its own rank: the order in src/lib.rs's
`# Layout` section. Uses are read from `crate::...` paths outside `#[cfg(test)]` code.

Usage: python scripts/check_layers.py [src]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Top to bottom: each may use only what comes after it.
LAYERS = [
    ["cli"],
    ["server"],
    ["api"],
    ["core"],
    ["refresh"],
    ["cluster"],
    ["upstream"],
    ["store"],
    ["state"],
    ["access"],
    ["domain"],
    ["observability"],
    ["proto", "clock"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
GROUP = re.compile(r"crate::\{(.*?)\};", re.S)
PATH = re.compile(r"crate::(\w+)")


def used(text: str) -> set[str]:
    """The subsystems `text` names through `crate::` paths."""
    names = set(PATH.findall(text))
    for group in GROUP.findall(text):
        depth, token = 0, ""
        for char in group + ",":
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif char == "," and depth == 0:
                names.add(token.strip().split("::")[0])
                token = ""
                continue
            if depth == 0:
                token += char
    return {name for name in names if name}


def without_test_code(text: str) -> str:
    """`text` without the items marked `#[cfg(test)]` (test modules, helpers)."""
    kept, rest = [], text
    while (start := rest.find("#[cfg(test)]")) >= 0:
        kept.append(rest[:start])
        rest = rest[start + len("#[cfg(test)]") :]
        ends = [i for i in (rest.find("{"), rest.find(";")) if i >= 0]
        if not ends:
            return "".join(kept)
        end = min(ends)
        if rest[end] == ";":
            rest = rest[end + 1 :]
            continue
        depth = 0
        for index in range(end, len(rest)):
            depth += {"{": 1, "}": -1}.get(rest[index], 0)
            if depth == 0:
                rest = rest[index + 1 :]
                break
        else:
            return "".join(kept)
    kept.append(rest)
    return "".join(kept)


def violations(src: Path) -> list[str]:
    found = []
    for path in sorted(src.rglob("*.rs")):
        owner = path.relative_to(src).parts[0].removesuffix(".rs")
        if owner in ("lib", "main"):
            continue
        if owner not in RANK:
            found.append(f"{path}: subsystem {owner!r} is not in LAYERS")
            continue
        text = without_test_code(path.read_text())
        for name in sorted(used(text) - {owner}):
            if name not in RANK:
                found.append(f"{path}: uses unknown subsystem {name!r}")
            elif RANK[name] <= RANK[owner]:
                found.append(f"{path}: {owner} must not use {name} (it is not below it)")
    return found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "src")
    found = violations(src)
    for line in found:
        print(f"check_layers: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
