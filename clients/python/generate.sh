#!/usr/bin/env bash
# Regenerates the gRPC stubs the keyrelay package ships, from the repository's proto/ files:
# src/keyrelay/_proto/keyrelay/v1/*_pb2.py and *_pb2_grpc.py, with their imports of each
# other made package-relative (so they live inside `keyrelay` and need nothing on sys.path).
#
# Usage: generate.sh [OUT_DIR]   (default: src/keyrelay/_proto)
# Needs grpcio-tools at the version pinned in pyproject.toml's `test` extra (the generated
# code records it); PYTHON names the interpreter that has it (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
out="${1:-$here/src/keyrelay/_proto}"
python="${PYTHON:-python3}"

mkdir -p "$out/keyrelay/v1"
rm -f "$out"/keyrelay/v1/*_pb2.py "$out"/keyrelay/v1/*_pb2_grpc.py
(cd "$proto" && "$python" -m grpc_tools.protoc -I . --python_out="$out" \
  --grpc_python_out="$out" keyrelay/v1/*.proto)

"$python" - "$out/keyrelay/v1" <<'PY'
import pathlib
import re
import sys

for path in sorted(pathlib.Path(sys.argv[1]).glob("*_pb2*.py")):
    text = path.read_text()
    fixed = re.sub(r"^from keyrelay\.v1 import ", "from . import ", text, flags=re.M)
    if "keyrelay.v1 import" in fixed.replace("from . import", ""):
        sys.exit(f"generate.sh: an import in {path} was not made package-relative")
    path.write_text(fixed)
PY
for init in "$out/__init__.py" "$out/keyrelay/__init__.py" "$out/keyrelay/v1/__init__.py"; do
  [[ -e "$init" ]] || echo '"""Generated gRPC stubs (generate.sh); do not edit."""' >"$init"
done
