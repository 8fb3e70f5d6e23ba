#!/usr/bin/env bash
# Runs every cargo-fuzz target for a fixed time (FUZZ_SECONDS each, default 60), starting
# from the seeds in fuzz/seeds. Needs a nightly toolchain; installs cargo-fuzz if missing.
# Not part of CI: a clean build with sanitizers takes several minutes on its own.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for target in $(cargo +nightly fuzz list); do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  echo "== fuzzing $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=65536
done
