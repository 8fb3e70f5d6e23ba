#!/usr/bin/env bash
# The TypeScript SDK's test command: install (when needed), build, type-check, run the
# conformance runner and compare its verdicts, then the tests against a real keyrelay.
#
# Usage: clients/node/test.sh KEYRELAY_BIN VECTORS.json RESULTS.jsonl
#   KEYRELAY_BIN   the keyrelay binary the tests start
#   VECTORS.json   materialized conformance vectors (clients/conformance/materialize.py)
#   RESULTS.jsonl  where the runner writes its verdicts
set -euo pipefail

if [ "$#" -ne 3 ]; then
  sed -n '5,8p' "$0" >&2
  exit 2
fi
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
bin=$(absolute "$1")
vectors=$(absolute "$2")
results=$(absolute "$3")
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

[ -x "$bin" ] || { echo "test.sh: keyrelay binary $bin is missing or not executable" >&2; exit 1; }
[ -f "$vectors" ] || { echo "test.sh: vectors file $vectors is missing" >&2; exit 1; }
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
  || { echo "test.sh: needs Node 20.19 or newer, found $(node --version)" >&2; exit 1; }

# Install exactly the lockfile when node_modules is missing or was installed from another one.
stamp=node_modules/.keyrelay-package-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "test.sh: npm ci" >&2
  npm ci --no-audit --no-fund
  printf '%s\n' "$want" > "$stamp"
fi

echo "test.sh: build" >&2
npm run --silent build
echo "test.sh: type-check" >&2
npm run --silent typecheck
echo "test.sh: conformance" >&2
node build/test/conformance-runner.js "$vectors" "$results"
python3 ../conformance/compare.py "$vectors" node="$results"
echo "test.sh: tests (keyrelay: $bin)" >&2
KEYRELAY_BIN="$bin" npm test --silent
