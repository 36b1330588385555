#!/usr/bin/env bash
# Run the whole test suite: lint, throwaway datastores, build, tests.
# CI runs it through .ci/run. Extra arguments go to the test runner.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/test.sh [TEST-RUNNER-ARGS...]

Runs, failing fast:
  1. cargo fmt --all --check
  2. cargo clippy --workspace --all-targets -- -D warnings   (SQLX_OFFLINE=true)
     then scripts/check-deploy.sh: the Helm chart, k8s/, Dockerfile (offline)
     then scripts/check-observability.sh: Prometheus rules and their promtool tests,
     dashboards (offline; installs promtool, which the end-to-end tests use too)
  3. throwaway Postgres and Redis on free ports (unless DATABASE_URL / REDIS_URL are set)
  4. cargo build --workspace --bins                         (SQLX_OFFLINE=true)
  5. cargo nextest run --workspace --no-fail-fast           (or cargo test if nextest is missing)
  6. scripts/check-api-contract.sh: schemathesis against the gateway's /openapi.json

Arguments are passed to the test runner, e.g.
  scripts/test.sh -E 'test(guest)'      # a nextest filter expression
  scripts/test.sh cart_                 # a test-name filter

Environment:
  SKIP_LINT=1     skip steps 1 and 2 (quick local iteration)
  DATABASE_URL    use this Postgres instead of a throwaway one; it must be a
                  superuser URL (tests create throw-away databases through it)
  REDIS_URL       use this Redis instead of a throwaway one
The end-to-end tests find the binaries through E2E_BIN_DIR (set to target/debug).
EOF
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
TEST_ARGS=("$@")

# CI gives no stdin: make sure nothing waits on (or scribbles over) fd 0.
if [[ ! -t 0 ]]; then exec </dev/null; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DS_TAG="test"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"

say() { printf '[test] %s\n' "$*" >&2; }
die() {
    printf '[test] ERROR: %s\n' "$*" >&2
    exit 1
}

START=$SECONDS
CURRENT_STEP=""
TMP_DIR=""
PG_TMP_DIR=""
PG_DATA=""
REDIS_PORT=""

# ------------------------------------------------------------------ clean-up
# shellcheck disable=SC2317 # invoked from traps
on_exit() {
    local rc=$?
    trap '' INT TERM
    if [[ -n $PG_DATA ]]; then ds_pg_stop "$PG_DATA" || true; fi
    if [[ -n $REDIS_PORT ]]; then ds_redis_stop "$REDIS_PORT" "$TMP_DIR/redis.pid" nosave || true; fi
    if [[ -n $TMP_DIR ]]; then rm -rf "$TMP_DIR" || true; fi
    if [[ -n $PG_TMP_DIR ]]; then rm -rf "$PG_TMP_DIR" || true; fi
    local took=$((SECONDS - START))
    if ((rc == 0)); then
        printf '\n[test] all steps passed in %dm%02ds\n' $((took / 60)) $((took % 60)) >&2
    else
        printf '\n[test] FAILED%s (exit %d) after %dm%02ds\n' \
            "${CURRENT_STEP:+ in step: $CURRENT_STEP}" "$rc" $((took / 60)) $((took % 60)) >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ steps
# A step is a function; it fails the run by returning non-zero (set -e).

step_fmt() {
    cargo fmt --all --check
}

step_clippy() {
    SQLX_OFFLINE=true cargo clippy --workspace --all-targets -- -D warnings
}

# The Helm chart, kustomize overlays, Dockerfile and docker-compose.yml, offline.
step_deploy() {
    bash "$ROOT/scripts/check-deploy.sh"
}

# Prometheus rules, their promtool unit tests and the Grafana dashboards, offline. Before
# the tests: it installs promtool, which crates/e2e/tests/observability.rs runs.
step_observability() {
    bash "$ROOT/scripts/check-observability.sh"
}

step_datastores() {
    # The servers are needed even with DATABASE_URL / REDIS_URL given: the fault
    # tests start private Postgres and Redis instances they can pause and kill.
    ds_ensure_packages postgres redis
    if [[ -z ${DATABASE_URL:-} || -z ${REDIS_URL:-} ]]; then
        TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cart-test.XXXXXX")
        chmod 755 "$TMP_DIR" # the postgres user must traverse it when we are root
    fi

    if [[ -n ${DATABASE_URL:-} ]]; then
        say "using Postgres from DATABASE_URL (must be a superuser)"
    else
        local pg_base=$TMP_DIR port attempt
        if ! ds_pg_can_reach "$pg_base"; then
            PG_TMP_DIR=$(mktemp -d /tmp/cart-test-pg.XXXXXX)
            chmod 755 "$PG_TMP_DIR"
            say "the postgres user cannot reach $TMP_DIR (TMPDIR=${TMPDIR:-}); using $PG_TMP_DIR for Postgres"
            pg_base=$PG_TMP_DIR
        fi
        for attempt in 1 2 3; do
            port=$(ds_free_port)
            PG_DATA=$pg_base/pg-$port
            if ds_pg_start "$PG_DATA" "$port" "$pg_base/postgres-$port.log" throwaway; then
                break
            fi
            ds_pg_stop "$PG_DATA" || true
            PG_DATA=""
            ((attempt < 3)) || die "could not start a throwaway Postgres"
            say "retrying on another port"
        done
        export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres
    fi

    if [[ -n ${REDIS_URL:-} ]]; then
        say "using Redis from REDIS_URL"
    else
        local rport rattempt
        for rattempt in 1 2 3; do
            rport=$(ds_free_port)
            REDIS_PORT=$rport
            if ds_redis_start "$TMP_DIR/redis" "$rport" "$TMP_DIR/redis.pid" "$TMP_DIR/redis.log" throwaway; then
                break
            fi
            ds_redis_stop "$rport" "$TMP_DIR/redis.pid" nosave || true
            REDIS_PORT=""
            ((rattempt < 3)) || die "could not start a throwaway Redis"
            say "retrying on another port"
        done
        export REDIS_URL=redis://127.0.0.1:$rport
    fi
    if [[ -n $PG_DATA ]]; then say "DATABASE_URL=$DATABASE_URL"; fi
    if [[ -n $REDIS_PORT ]]; then say "REDIS_URL=$REDIS_URL"; fi
}

step_build() {
    SQLX_OFFLINE=true cargo build --workspace --bins
    export E2E_BIN_DIR=$ROOT/target/debug
}

step_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        SQLX_OFFLINE=true cargo nextest run --workspace --no-fail-fast \
            ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}
    else
        say "cargo-nextest not found; using cargo test"
        SQLX_OFFLINE=true cargo test --workspace --no-fail-fast \
            ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}
    fi
}

# The public API against the OpenAPI document the gateway serves (schemathesis), on the
# binaries of step 4 and the datastores of step 3 (a fresh database of its own).
step_api_contract() {
    bash "$ROOT/scripts/check-api-contract.sh" --no-build
}

# run_step TITLE FUNCTION: print a header, run the step, time it. A failing
# step ends the script (set -e); the EXIT trap names it and cleans up.
STEP_NO=0
run_step() {
    local title=$1 fn=$2 t0=$SECONDS
    STEP_NO=$((STEP_NO + 1))
    CURRENT_STEP=$title
    printf '\n[test] ==== %d. %s ====\n' "$STEP_NO" "$title" >&2
    "$fn"
    printf '[test] ---- %s: ok (%ds)\n' "$title" $((SECONDS - t0)) >&2
    CURRENT_STEP=""
}

skip_step() {
    STEP_NO=$((STEP_NO + 1))
    printf '\n[test] ==== %d. %s: skipped (%s) ====\n' "$STEP_NO" "$1" "$2" >&2
}

# ------------------------------------------------------------------ main
command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain"
say "CI=${CI:-} $(cargo --version)"

if [[ -n ${SKIP_LINT:-} && ${SKIP_LINT} != 0 ]]; then
    skip_step "cargo fmt --check" "SKIP_LINT=1"
    skip_step "cargo clippy" "SKIP_LINT=1"
else
    run_step "cargo fmt --check" step_fmt
    run_step "cargo clippy" step_clippy
fi
run_step "deployment artefacts (scripts/check-deploy.sh)" step_deploy
run_step "observability (scripts/check-observability.sh)" step_observability
run_step "datastores" step_datastores
run_step "cargo build (bins)" step_build
run_step "tests" step_tests
run_step "API contract (scripts/check-api-contract.sh)" step_api_contract
# Later checks: add `step_NAME() { ...; }` above and a `run_step "title" step_NAME` line here.
