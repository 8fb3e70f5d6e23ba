"""The gRPC stubs shipped in the package are exactly what generate.sh makes from proto/ now:
regenerate them into a temporary directory and compare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT = HERE.parent
SHIPPED = CLIENT / "src" / "keyrelay" / "_proto"


def generated_files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_the_shipped_stubs_match_the_proto_files(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(CLIENT / "generate.sh"), str(out)], check=True, env=env)
    fresh, shipped = generated_files(out), generated_files(SHIPPED)
    assert sorted(fresh) == sorted(shipped)
    stale = [name for name in fresh if fresh[name] != shipped[name]]
    assert not stale, f"stale stubs {stale}: run clients/python/generate.sh"
    assert any(name.endswith("key_service_pb2_grpc.py") for name in fresh)


def test_the_installed_package_carries_the_stubs() -> None:
    from keyrelay.proto import admin_service_pb2, key_service_pb2

    assert key_service_pb2.DESCRIPTOR.name == "keyrelay/v1/key_service.proto"
    assert admin_service_pb2.DESCRIPTOR.package == "keyrelay.v1"


def test_the_tests_exercise_the_installed_package_not_the_source_tree() -> None:
    import keyrelay

    location = Path(keyrelay.__file__).resolve()
    assert CLIENT / "src" not in location.parents, location
    assert (location.parent / "py.typed").is_file()
