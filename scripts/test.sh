#!/usr/bin/env bash
# keyrelay's single test command.
#
# Runs, in order and stopping at the first failure:
#   buf lint and buf breaking against proto/baseline/keyrelay-v1.json (buf from npm)
#   ruff on the Python code; the subsystems' dependency order (scripts/check_layers.py);
#       hadolint on the Dockerfile, and its build stage rebuilt from exactly what its COPY
#       lines bring (scripts/docker_context.py); tools in target/tools-venv
#   Chromium (Debian) and playwright-core (npm) for the status page's browser test
#   Go and go-oidc (Debian, GOPATH mode, nothing downloaded) for the Go recipe's test
#   cargo fmt --all -- --check
#   cargo clippy --workspace --all-targets --locked -- -D warnings
#   cargo test --workspace --locked "$@"   (unit and integration tests of the server and
#       the Rust verifier SDK; benches are type-checked by clippy, run with `cargo bench`)
#   the deployment files: compose and Kubernetes schemas, their settings against
#       `keyrelay serve --help`, promtool on the alert rules (scripts/check_deploy.py)
#   the Python and TypeScript verifier SDKs (clients/python/test.sh, clients/node/test.sh)
#   the conformance verdicts of all three SDKs, compared (clients/conformance/compare.py)
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
#
# The Rust tests need a Postgres server. The URL of a superuser able to
# CREATE DATABASE is exported as TEST_DATABASE_URL, found in this order:
#   1. TEST_DATABASE_URL, if already set, is used as is.
#   2. A local server on 127.0.0.1:5432 that accepts user `postgres` with
#      trust auth (checked with pg_isready and psql).
#   3. A throwaway cluster (initdb/pg_ctl from the highest
#      /usr/lib/postgresql/*/bin; if none is found and we are root, Debian's
#      `postgresql` package is installed with apt-get). It runs on a free
#      port on 127.0.0.1 and is stopped and deleted when the script exits.
# If no Postgres can be provided the script fails; tests are never skipped.
#
# Environment variables:
#   TEST_DATABASE_URL                 use this Postgres server URL (step 1).
#   KEYRELAY_TEST_FORCE_THROWAWAY_PG=1
#                                     always use a throwaway cluster (step 3),
#                                     even if step 1 or 2 would work.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# Hide passwords in a URL or key=value connection string before printing it.
redact_url() {
  printf '%s\n' "$1" | sed -E \
    -e 's#^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^/]*@#\1:***@#' \
    -e 's#(password=)[^& ]*#\1***#g'
}

# Step 2: is there a trust-auth server on 127.0.0.1:5432 for user postgres?
local_pg_usable() {
  command -v pg_isready >/dev/null 2>&1 || return 1
  command -v psql >/dev/null 2>&1 || return 1
  pg_isready -q -h 127.0.0.1 -p 5432 -t 5 >/dev/null 2>&1 || return 1
  local out
  # No password from the environment or ~/.pgpass: the URL we export has none.
  out="$(env -u PGPASSWORD PGPASSFILE=/nonexistent/keyrelay-no-pgpass PGCONNECT_TIMEOUT=5 \
    psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'select 1' \
    2>/dev/null)" || return 1
  [[ "$out" == 1 ]]
}

# Step 3 helpers.
PG_TMPDIR=""
PG_BIN=""
PG_AS_POSTGRES=0

# Run a command as the cluster owner (the postgres system user when root).
as_pg_owner() {
  if ((PG_AS_POSTGRES)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cleanup_throwaway_pg() {
  if [[ -n "$PG_TMPDIR" && -d "$PG_TMPDIR" ]]; then
    if [[ -f "$PG_TMPDIR/data/postmaster.pid" ]]; then
      (cd "$PG_TMPDIR" && as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_TMPDIR/data" \
        -m immediate stop >/dev/null 2>&1) || true
    fi
    rm -rf "$PG_TMPDIR" || true
  fi
}

find_pg_bin() {
  local dir best=""
  while IFS= read -r dir; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      best="$dir"
    fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  [[ -n "$best" ]] || return 1
  printf '%s\n' "$best"
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
  else
    echo $((20000 + RANDOM % 40000))
  fi
}

start_throwaway_pg() {
  if ! PG_BIN="$(find_pg_bin)"; then
    if ((EUID != 0)); then
      die "no initdb/pg_ctl under /usr/lib/postgresql/*/bin and not root, so" \
        "cannot install Debian's postgresql package; install it or set TEST_DATABASE_URL"
    fi
    log "no Postgres server binaries found; installing Debian's postgresql package"
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2 ||
      die "apt-get install postgresql failed"
    PG_BIN="$(find_pg_bin)" ||
      die "postgresql installed, but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
  fi

  if ((EUID == 0)); then
    # initdb refuses to run as root: run the cluster as the postgres user.
    PG_AS_POSTGRES=1
    if ! id -u postgres >/dev/null 2>&1; then
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin postgres || die "could not create the postgres user"
    fi
    # Under /tmp so that the postgres user can reach it whatever TMPDIR is.
    PG_TMPDIR="$(mktemp -d /tmp/keyrelay-test-pg.XXXXXX)"
  else
    PG_TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/keyrelay-test-pg.XXXXXX")"
  fi
  trap cleanup_throwaway_pg EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local data="$PG_TMPDIR/data" sock="$PG_TMPDIR/sock" logf="$PG_TMPDIR/postgres.log"
  mkdir "$sock"
  if ((PG_AS_POSTGRES)); then
    chown -R postgres: "$PG_TMPDIR"
  fi

  # Run from the temp dir: the postgres user may not be able to read our cwd.
  if ! (cd "$PG_TMPDIR" && as_pg_owner "$PG_BIN/initdb" -D "$data" -A trust \
    -U postgres -E UTF8 --no-locale >"$PG_TMPDIR/initdb.log" 2>&1); then
    cat "$PG_TMPDIR/initdb.log" >&2 || true
    die "initdb failed"
  fi

  local port attempt started=0
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    if (cd "$PG_TMPDIR" && as_pg_owner "$PG_BIN/pg_ctl" -D "$data" -l "$logf" -w \
      -t 60 -o "-c listen_addresses=127.0.0.1 -p $port -k $sock -c fsync=off -c max_connections=300" \
      start >/dev/null 2>&1); then
      started=1
      break
    fi
    log "throwaway Postgres failed to start on port $port (attempt $attempt)"
    (cd "$PG_TMPDIR" && as_pg_owner "$PG_BIN/pg_ctl" -D "$data" -m immediate stop \
      >/dev/null 2>&1) || true
  done
  if ((!started)); then
    cat "$logf" >&2 2>/dev/null || true
    die "could not start a throwaway Postgres cluster"
  fi

  TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  if [[ -x "$PG_BIN/psql" ]]; then
    env -u PGPASSWORD PGPASSFILE=/nonexistent/keyrelay-no-pgpass PGCONNECT_TIMEOUT=10 \
      "$PG_BIN/psql" -X -w "$TEST_DATABASE_URL" -Atc 'select 1' >/dev/null ||
      die "throwaway Postgres started but does not answer queries"
  fi
  log "using throwaway Postgres ($PG_BIN) at $TEST_DATABASE_URL"
}

if [[ "${KEYRELAY_TEST_FORCE_THROWAWAY_PG:-}" == 1 ]]; then
  log "KEYRELAY_TEST_FORCE_THROWAWAY_PG=1: forcing a throwaway Postgres cluster"
  start_throwaway_pg
elif [[ -n "${TEST_DATABASE_URL:-}" ]]; then
  log "using Postgres from TEST_DATABASE_URL: $(redact_url "$TEST_DATABASE_URL")"
elif local_pg_usable; then
  TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  log "using local Postgres at $TEST_DATABASE_URL"
else
  start_throwaway_pg
fi
[[ -n "${TEST_DATABASE_URL:-}" ]] || die "no Postgres available; refusing to run the tests"
export TEST_DATABASE_URL

# Makes command $1 available, installing Debian package $2 when it is missing (as root).
ensure_command() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null 2>&1 && return 0
  ((EUID == 0)) || die "$command is missing; install Debian's $package package"
  log "installing Debian's $package package for $command"
  apt-get update >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >&2 ||
    die "apt-get install $package failed"
}

# Makes Debian package $1 installed (as root), for packages with no command, such as -dev ones.
ensure_package() {
  local package="$1"
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" == installed ]] && return 0
  ((EUID == 0)) || die "Debian's $package package is missing; install it"
  log "installing Debian's $package package"
  apt-get update >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >&2 ||
    die "apt-get install $package failed"
}

# A virtual environment at $1 with the packages of requirements file $2 from PyPI, rebuilt
# when the requirements change.
python_venv() {
  local venv="$1" requirements="$2"
  if ! cmp -s "$requirements" "$venv/requirements.txt"; then
    log "building the Python virtual environment in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
  fi
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Node (Debian's, 20.19 or newer) runs buf, the browser test's driver and the TypeScript SDK.
ensure_command node nodejs
ensure_command npm npm

# The gRPC contract: buf (from the npm registry) lints it and checks it against the last
# released contract.
BUF=target/buf/node_modules/.bin/buf
if [[ ! -x "$BUF" ]]; then
  log "installing buf from the npm registry"
  npm install --prefix target/buf --no-save --silent @bufbuild/buf@1
fi
"$BUF" lint
"$BUF" breaking --against proto/baseline/keyrelay-v1.json

# Python (scripts, clients) with ruff; the container image, checked without a Docker engine:
# hadolint, then the build stage rebuilt from exactly the context its COPY lines bring.
TOOLS=target/tools-venv
python_venv "$TOOLS" scripts/requirements-tools.txt
"$TOOLS/bin/ruff" check scripts clients/python clients/conformance
"$TOOLS/bin/ruff" format --check scripts clients/python clients/conformance
"$TOOLS/bin/python" scripts/check_layers.py
"$TOOLS/bin/hadolint" Dockerfile
"$TOOLS/bin/python" scripts/docker_context.py

# The SDK conformance vectors (clients/conformance), signed now; every SDK verifies them.
CONFORMANCE=target/conformance
mkdir -p "$CONFORMANCE"
"$TOOLS/bin/python" clients/conformance/materialize.py "$CONFORMANCE/vectors.json"
export KEYRELAY_CONFORMANCE_VECTORS="$PWD/$CONFORMANCE/vectors.json"
export KEYRELAY_CONFORMANCE_RESULTS="$PWD/$CONFORMANCE/results-rust.jsonl"

# The status page's browser test (tests/api/status_page.rs): Debian's Chromium, driven by
# playwright-core from the npm registry.
ensure_command chromium chromium
BROWSER_MODULES=target/browser/node_modules
if [[ ! -d "$BROWSER_MODULES/playwright-core" ]]; then
  log "installing playwright-core from the npm registry"
  npm install --prefix target/browser --no-save --silent playwright-core@1
fi
export KEYRELAY_TEST_NODE_MODULES="$PWD/$BROWSER_MODULES"

# The Go recipe's test (clients/go, tests/api/go.rs): Debian's Go and go-oidc, built in GOPATH
# mode from /usr/share/gocode.
ensure_command go golang-go
ensure_package golang-github-coreos-go-oidc-dev
KEYRELAY_TEST_GO="$(command -v go)"
export KEYRELAY_TEST_GO
export KEYRELAY_TEST_GOPATH=/usr/share/gocode

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"

# The deployment files (compose, Kubernetes, alert rules and their tests, the dashboard),
# checked against the binary just built and against their schemas; promtool from Debian.
ensure_command promtool prometheus
"$TOOLS/bin/python" scripts/check_deploy.py target/debug/keyrelay

# The Python and TypeScript verifier SDKs: their own lint, types and tests, against the
# binary just built, and their verdicts on the same conformance vectors.
clients/python/test.sh target/debug/keyrelay "$CONFORMANCE/vectors.json" \
  "$CONFORMANCE/results-python.jsonl"
clients/node/test.sh target/debug/keyrelay "$CONFORMANCE/vectors.json" \
  "$CONFORMANCE/results-node.jsonl"

# One behaviour for every SDK: the verdicts of every SDK on the conformance vectors, side by
# side (the Rust SDK's were written by its test above).
"$TOOLS/bin/python" clients/conformance/compare.py "$CONFORMANCE/vectors.json" \
  rust="$CONFORMANCE/results-rust.jsonl" python="$CONFORMANCE/results-python.jsonl" \
  node="$CONFORMANCE/results-node.jsonl"
