"""The README's quick start works as written: its Python block, run as it stands against a
real keyrelay serving tenant "acme", prints the claims of a good token and the refusal of a
bad one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import Admin, KeyrelayServer, MockIdP, SigningKey

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's quick start"
    return match.group(1)


def run(code: str, server: KeyrelayServer, token: str) -> str:
    env = {**os.environ, "KEYRELAY": server.address, "TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_quick_start_runs_as_written(
    server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    code = quick_start()
    assert len(code.strip().splitlines()) <= 10
    key = SigningKey("quick-start")
    admin.register("acme", "okta", idp.publish("/acme/jwks", [key]))
    issuer = "https://acme.okta.com"

    assert run(code, server, key.sign("alice", iss=issuer)) == "hello alice\n"
    refused = run(code, server, key.sign("alice", iss=issuer, aud="billing"))
    assert refused.startswith("refused: audience ")
