#!/usr/bin/env bash
# The verifier SDK benches (BENCHMARKS.md, "Verifier SDKs"): verify() of the Python,
# TypeScript and Rust SDKs against their own JOSE libraries (PyJWT, jose, jsonwebtoken) on the
# same tokens, each comparison interleaved in one process, and the memory of held key sets.
# Prints one table. A bench, never a test: nothing here runs in CI.
#
# Usage: scripts/bench_sdks.sh [KEYRELAY_BIN]
#   KEYRELAY_BIN  the keyrelay server the benches start and take keys from (default: built
#                 with `cargo build --bin keyrelay`, i.e. target/debug/keyrelay). The server
#                 only pushes the keys; verification never calls it.
# Environment:
#   ROUNDS         rounds per comparison (default 41)
#   BATCH_SECONDS  length of each timed batch (default 0.1)
#   SDKS           which benches to run (default "python node rust")
#
# Everything it makes goes to target/bench-sdks: a copy of the server binary (so a rebuild
# during the run changes nothing), the fixture (clients/python/bench/fixture.py; the memory
# keys are cached in memory-keys.json), the TypeScript SDK and bench built in a scratch copy
# (node), and each bench's results-*.json. Traffic stays on 127.0.0.1.
set -euo pipefail

log() { printf 'bench_sdks: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

[[ $# -le 1 ]] || die "usage: $0 [KEYRELAY_BIN]"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/target/bench-sdks"
rounds="${ROUNDS:-41}"
seconds="${BATCH_SECONDS:-0.1}"
sdks="${SDKS:-python node rust}"
mkdir -p "$out"

# The server.
if [[ $# -eq 1 ]]; then
  bin="$(abspath "$1")"
else
  log "cargo build --bin keyrelay"
  (cd "$repo" && cargo build --quiet --bin keyrelay)
  bin="$repo/target/debug/keyrelay"
fi
[[ -x "$bin" ]] || die "no keyrelay binary at $bin"
cp "$bin" "$out/keyrelay.new" && mv "$out/keyrelay.new" "$out/keyrelay"
server="$out/keyrelay"

# Python: the SDK's test environment (clients/python/test.sh) if it exists, else a small one
# with the SDK's dependencies. The SDK itself is imported from clients/python/src.
py="$repo/target/python-sdk-venv/bin/python"
if [[ ! -x "$py" ]]; then
  venv="$out/python-venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    log "making $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$repo/clients/python"
  fi
  py="$venv/bin/python"
fi
export PYTHONPATH="$repo/clients/python/src"

log "fixture"
"$py" "$repo/clients/python/bench/fixture.py" "$out/fixture.json" --cache "$out/memory-keys.json"

# TypeScript: node_modules as clients/node/test.sh installs it, then the SDK and the bench
# built in a scratch copy, so that no build of clients/node (dist/, build/) is touched.
build_node() {
  local here="$repo/clients/node" copy="$out/node"
  local stamp="$here/node_modules/.keyrelay-package-lock.sha256" want
  want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
  if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
    log "npm ci (clients/node)"
    (cd "$here" && npm ci --no-audit --no-fund)
    printf '%s\n' "$want" >"$stamp"
  fi
  rm -rf "$copy"
  mkdir -p "$copy/proto/keyrelay/v1"
  cp -R "$here/package.json" "$here/tsconfig.json" "$here/src" "$here/test" "$here/bench" "$copy/"
  cp "$repo"/proto/keyrelay/v1/*.proto "$copy/proto/keyrelay/v1/"
  ln -s "$here/node_modules" "$copy/node_modules"
  cat >"$copy/tsconfig.bench.json" <<'JSON'
{
  "extends": "./tsconfig.json",
  "compilerOptions": { "rootDir": ".", "outDir": "build", "declaration": false, "declarationMap": false },
  "include": ["bench/**/*.ts", "test/support/**/*.ts"]
}
JSON
  log "tsc (SDK and bench, in $copy)"
  (cd "$copy" && node_modules/.bin/tsc -p tsconfig.json && node_modules/.bin/tsc -p tsconfig.bench.json)
}

for sdk in $sdks; do
  case "$sdk" in
    python)
      log "python bench"
      "$py" "$repo/clients/python/bench/verify_bench.py" "$server" "$out/fixture.json" \
        "$out/results-python.json" --rounds "$rounds" --seconds "$seconds"
      ;;
    node)
      build_node
      log "node bench"
      (cd "$out/node" && KEYRELAY_BIN="$server" ROUNDS="$rounds" BATCH_SECONDS="$seconds" \
        node --expose-gc build/bench/verify-bench.js "$out/fixture.json" "$out/results-node.json")
      ;;
    rust)
      log "rust bench (cargo bench -p keyrelay-verifier --bench verify)"
      (cd "$repo" && KEYRELAY_BIN="$server" KEYRELAY_BENCH_FIXTURE="$out/fixture.json" \
        KEYRELAY_BENCH_OUT="$out/results-rust.json" ROUNDS="$rounds" BATCH_SECONDS="$seconds" \
        cargo bench --quiet -p keyrelay-verifier --bench verify)
      ;;
    *) die "unknown SDK $sdk (python, node, rust)" ;;
  esac
done

results=()
for sdk in $sdks; do results+=("$out/results-$sdk.json"); done
"$py" "$repo/clients/python/bench/report.py" "${results[@]}"
