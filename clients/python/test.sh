#!/usr/bin/env bash
# The Python SDK's test command: lint, types, stub freshness, conformance vectors, and the
# pytest suite against a real keyrelay server.
#
# Usage: clients/python/test.sh KEYRELAY_BIN VECTORS.json RESULTS.jsonl
#   KEYRELAY_BIN   the keyrelay binary the live tests start (e.g. target/debug/keyrelay)
#   VECTORS.json   conformance vectors (clients/conformance/materialize.py; made if missing)
#   RESULTS.jsonl  where the conformance runner writes this SDK's verdicts
#
# The virtual environment lives in target/python-sdk-venv and is rebuilt only when
# pyproject.toml (dependencies and the pinned test tools) changes. The package is installed
# from a wheel built from this directory each run (not editable), so the tests exercise the
# installed package. Nothing is skipped: whatever is missing is installed, or the run fails.
set -euo pipefail

log() { printf 'python-sdk: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $# -eq 3 ]] || die "usage: $0 KEYRELAY_BIN VECTORS.json RESULTS.jsonl"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
bin="$(abspath "$1")"
vectors="$(abspath "$2")"
results="$(abspath "$3")"
[[ -x "$bin" ]] || die "no keyrelay binary at $bin"

started=$SECONDS
venv="$repo/target/python-sdk-venv"
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# Bump when the recipe below changes in a way the stamp would not see.
recipe=1
stamp="$(
  {
    echo "recipe $recipe"
    python3 --version
    cat "$here/pyproject.toml"
  } | sha256sum | cut -d' ' -f1
)"
fresh=0
if [[ ! -x "$py" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
  log "building the virtual environment in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$py" -m pip install --quiet --upgrade pip "setuptools>=77" wheel
  fresh=1
fi

# The package, from a wheel built out of a copy of the sources (so no build output is left in
# the tree, and nothing stale from an earlier build slips into the wheel).
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
mkdir "$build/src"
cp -R "$here/pyproject.toml" "$here/README.md" "$here/src" "$build/src/"
find "$build/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$build/wheel" "$build/src"
wheel=("$build"/wheel/keyrelay-*.whl)
if ((fresh)); then
  # Its dependencies and its test extra, from PyPI.
  "$py" -m pip install --quiet "${wheel[0]}[test]"
  echo "$stamp" >"$venv/.stamp"
else
  "$py" -m pip install --quiet --no-deps --force-reinstall "${wheel[0]}"
fi
log "venv and package ready ($((SECONDS - started)) s)"

cd "$here"
log "ruff"
"$venv/bin/ruff" check --cache-dir "$venv/.ruff_cache" .
"$venv/bin/ruff" format --check --cache-dir "$venv/.ruff_cache" .

log "mypy --strict"
"$venv/bin/mypy" --strict --cache-dir "$venv/.mypy_cache" src/keyrelay examples

export KEYRELAY_BIN="$bin"
pytest=("$py" -m pytest -p no:cacheprovider -q)

log "stub freshness"
"${pytest[@]}" tests/test_stubs.py

log "conformance vectors"
if [[ ! -f "$vectors" ]]; then
  log "no $vectors: materializing it"
  mkdir -p "$(dirname "$vectors")"
  "$py" "$repo/clients/conformance/materialize.py" "$vectors"
fi
mkdir -p "$(dirname "$results")"
"$py" tests/conformance_runner.py "$vectors" "$results"
"$py" "$repo/clients/conformance/compare.py" "$vectors" "python=$results" >"$build/compare.txt" ||
  { cat "$build/compare.txt"; die "conformance: verdicts differ (see above)"; }
tail -n 1 "$build/compare.txt" >&2

log "pytest (live, against $bin)"
"${pytest[@]}" --durations=5 tests --ignore=tests/test_stubs.py

log "all passed in $((SECONDS - started)) s"
