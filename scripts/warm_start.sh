#!/usr/bin/env bash
# Times keyrelay's warm start on a copy of an embedded store, for A/B runs of two builds on
# the same rows (BENCHMARKS.md, "Scale of registrations").
#
#   scripts/warm_start.sh STORE_DIR BINARY [RUNS]
#
# STORE_DIR holds a keyrelay.db (copy one out of a `cargo bench --bench scale` run with
# `sqlite3 <its store> ".backup STORE_DIR/keyrelay.db"`). Each run starts BINARY on a fresh
# copy, and prints the wall time from exec to the "keyrelay serving" log line, the CPU the
# process used by then (user and system, from /proc/<pid>/stat) and its resident memory.
set -euo pipefail

store=$1
binary=$2
runs=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for _ in $(seq "$runs"); do
    rm -rf "$work/data"
    cp -r "$store" "$work/data"
    start=$(date +%s.%N)
    RUST_LOG=info "$binary" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --admin-token warm-start --dev-allow-http-loopback --data-dir "$work/data" \
        >"$work/log" 2>&1 &
    pid=$!
    until grep -q "keyrelay serving" "$work/log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$work/log" >&2
            exit 1
        fi
        sleep 0.02
    done
    end=$(date +%s.%N)
    read -r -a stat <<<"$(sed 's/.*) //' "/proc/$pid/stat")"
    rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v wall="$(echo "$end - $start" | bc)" -v user="${stat[11]}" -v sys="${stat[12]}" \
        -v rss="$rss_kib" \
        'BEGIN { printf "wall %.2f s, CPU user %.2f s, system %.2f s, resident %d MiB\n", wall, user / 100, sys / 100, rss / 1024 }'
done
