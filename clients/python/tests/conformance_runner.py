"""The Python SDK's conformance runner: verifies every materialized vector with
keyrelay.verify_with_key_set (the code Verifier.verify uses) and writes one JSON line per
vector: {"name", "verdict", "sub"}.

Usage: python conformance_runner.py VECTORS.json OUT.jsonl
(make VECTORS.json with clients/conformance/materialize.py; compare with compare.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import keyrelay


def verdict(vector: dict[str, Any]) -> dict[str, Any]:
    """The SDK's answer for one vector."""
    expect = vector.get("expect", {})
    try:
        claims = keyrelay.verify_with_key_set(
            vector["token"],
            vector["jwks"],
            issuers=expect.get("issuers") or None,
            audiences=expect.get("audiences") or None,
            leeway=expect.get("leeway", 60),
        )
    except keyrelay.VerifyError as refusal:
        return {"name": vector["name"], "verdict": refusal.kind, "sub": None}
    return {"name": vector["name"], "verdict": "accept", "sub": claims.get("sub")}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    vectors = json.loads(Path(argv[1]).read_text())["vectors"]
    lines = [json.dumps(verdict(vector)) for vector in vectors]
    Path(argv[2]).write_text("".join(line + "\n" for line in lines))
    print(f"conformance_runner: {len(lines)} verdicts in {argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
