#!/usr/bin/env bash
# Contract test of the public API: the five services on a throwaway Postgres and Redis,
# then schemathesis against the OpenAPI document the gateway serves (/openapi.json),
# checking that no answer is a 5xx and that every answer matches the document (status
# code, content type, headers, body schema).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/check-api-contract.sh [options]

  1. the five debug binaries: $E2E_BIN_DIR when it holds them (scripts/test.sh sets it),
     else `cargo build --workspace --bins` (SQLX_OFFLINE=true) and target/debug
  2. a throwaway Postgres and Redis on free ports (scripts/lib/datastores.sh), or the
     ones of DATABASE_URL (a superuser URL: a fresh database is created for the run and
     dropped after it) / REDIS_URL (keys under a prefix of the run's own)
  3. auth-svc, cart-svc, then session-svc, cleanup-worker and the gateway on free ports,
     as the end-to-end harness starts them (crates/e2e/src/platform.rs), the gateway's
     per-client rate limits raised out of the fuzzer's way; a second gateway with tight
     rate limits (2 requests/s per client, bursts of 5); waits for every /readyz
  4. schemathesis run http://127.0.0.1:<gateway>/openapi.json with the checks
     not_a_server_error, status_code_conformance, content_type_conformance,
     response_headers_conformance, response_schema_conformance, each run with a guest
     session of its own (POST /api/v1/sessions) sent as X-Session-Token:
       main         every operation but those that end the caller's session
                    (--max-time budget)
       session-end  GET and DELETE /api/v1/session (DELETE ends the session; 10 s)
       login        POST /api/v1/auth/login (a successful login ends the guest session
                    it carries; 10 s)
       rate-limits  the /api/v1/cart operations on the second gateway: a client going
                    too fast gets 429, which the document must allow (10 s)
  5. a summary; the exit status is non-zero on any failure (and on any error of the
     script itself). Every process it started is stopped on exit.

Logins that fail too often for one account get 429 (documented for login): accepted
like any documented answer.

Options:
  --max-examples N   test cases per operation and phase (default 30)
  --max-time SECS    time budget of the main schemathesis run (default 90; the whole
                     script stays under 3 minutes once built and installed)
  --seed N           schemathesis seed (default: random; printed, to reproduce a run)
  --workers N        schemathesis workers (default 1: with more, Python 3.11's ast module,
                     which hypothesis uses from several threads, can fail with
                     "SystemError: AST constructor recursion depth mismatch")
  --no-build         never run cargo build (use $E2E_BIN_DIR or target/debug as they are)
  --keep             keep the temp dir (service logs, datastores, the fetched openapi.json)
  -h, --help         this text

The tools live in a venv made on first use from scripts/api-contract/requirements.txt
(pip, from PyPI; under a minute) and reused offline afterwards. Reports (JUnit, NDJSON
and a pytest file reproducing each failure) go to target/api-contract/.

Environment:
  E2E_BIN_DIR         directory of the five binaries (default target/debug)
  DATABASE_URL        a superuser Postgres URL to use instead of a throwaway Postgres
  REDIS_URL           a Redis to use instead of a throwaway one
  CART_CONTRACT_VENV  where the venv lives
                      (default: ${XDG_CACHE_HOME:-~/.cache}/cart-platform-api-contract-venv)
  PYTHON              the Python (>= 3.10) that makes the venv (default: python3)
EOF
}

MAX_EXAMPLES=30
MAX_TIME=90
SEED=""
WORKERS=1
BUILD=1
KEEP=0
while (($# > 0)); do
    case $1 in
        --max-examples) MAX_EXAMPLES=${2:?--max-examples needs a value}; shift ;;
        --max-time) MAX_TIME=${2:?--max-time needs a value}; shift ;;
        --seed) SEED=${2:?--seed needs a value}; shift ;;
        --workers) WORKERS=${2:?--workers needs a value}; shift ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'check-api-contract: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
for v in MAX_EXAMPLES MAX_TIME WORKERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { printf 'check-api-contract: %s must be a positive integer\n' "$v" >&2; exit 2; }
done
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || { printf 'check-api-contract: --seed must be an integer\n' >&2; exit 2; }
if [[ -z $SEED ]]; then SEED=$(((RANDOM << 15) | RANDOM)); fi

# CI gives no stdin: nothing may wait on it.
if [[ ! -t 0 ]]; then exec </dev/null; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DS_TAG="api-contract"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"

say() { printf '[api-contract] %s\n' "$*" >&2; }
die() {
    printf '[api-contract] ERROR: %s\n' "$*" >&2
    exit 1
}

SERVICES=(auth-svc cart-svc session-svc cleanup-worker gateway)
REQUIREMENTS=$ROOT/scripts/api-contract/requirements.txt
VENV=${CART_CONTRACT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cart-platform-api-contract-venv}
PYTHON=${PYTHON:-python3}
START=$SECONDS

# ------------------------------------------------------------------ clean-up
TMP=""
PG_DATA=""
REDIS_PORT=""
ADMIN_URL=""     # superuser URL of the Postgres holding the run's database
RUN_DB=""        # the run's database, dropped on exit
declare -A PIDS=()
SUMMARY=()

stop_services() {
    local name pid i
    for name in "${!PIDS[@]}"; do
        kill -TERM "${PIDS[$name]}" 2>/dev/null || true
    done
    for name in "${!PIDS[@]}"; do
        pid=${PIDS[$name]}
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) did not stop on SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        unset "PIDS[$name]"
    done
}

drop_run_db() {
    [[ -n $RUN_DB && -n $ADMIN_URL ]] || return 0
    local psql
    psql=$(ds_pg_tool psql) || return 0
    "$psql" -X -q "$ADMIN_URL" -v ON_ERROR_STOP=1 \
        -c "drop database if exists \"$RUN_DB\" with (force)" </dev/null >/dev/null 2>&1 ||
        say "could not drop database $RUN_DB"
    RUN_DB=""
}

# shellcheck disable=SC2317 # invoked from traps
on_exit() {
    local rc=$?
    trap '' INT TERM
    stop_services || true
    if [[ -n ${REDIS_URL_GIVEN:-} && -n ${KEY_PREFIX:-} ]] && command -v redis-cli >/dev/null 2>&1; then
        # Our keys in a shared Redis: delete them (sessions, cart cache, counters).
        redis-cli -u "$REDIS_URL" --scan --pattern "${KEY_PREFIX}*" 2>/dev/null </dev/null |
            xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
    fi
    drop_run_db || true
    if [[ -n $PG_DATA ]]; then ds_pg_stop "$PG_DATA" || true; fi
    if [[ -n $REDIS_PORT ]]; then ds_redis_stop "$REDIS_PORT" "$TMP/redis.pid" nosave || true; fi
    if [[ -n $TMP ]]; then
        if ((rc != 0)) && [[ -d $TMP/logs ]]; then
            mkdir -p "$ROOT/target/api-contract"
            rm -rf "$ROOT/target/api-contract/logs"
            cp -r "$TMP/logs" "$ROOT/target/api-contract/logs" 2>/dev/null || true
        fi
        if ((KEEP)); then say "kept $TMP"; else rm -rf "$TMP" || true; fi
    fi
    local took=$((SECONDS - START)) line
    printf '\n[api-contract] ==== summary ====\n' >&2
    for line in ${SUMMARY[@]+"${SUMMARY[@]}"}; do printf '[api-contract]   %s\n' "$line" >&2; done
    if ((rc == 0)); then
        printf '[api-contract] PASSED in %dm%02ds\n' $((took / 60)) $((took % 60)) >&2
    else
        printf '[api-contract] FAILED (exit %d) after %dm%02ds; service logs in target/api-contract/logs/\n' \
            "$rc" $((took / 60)) $((took % 60)) >&2
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ tools
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.10 or later"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.10 or later is needed"
ds_ensure_packages postgres redis curl

# The venv is current when its stamp names these requirements and this Python
# (the same scheme as scripts/check-deploy.sh).
want_stamp() {
    {
        sha256sum "$REQUIREMENTS" | cut -d' ' -f1
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

make_venv() {
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            say "python3 -m venv failed: installing python3-venv"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
                { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
            "$PYTHON" -m venv "$VENV" || die "cannot make a venv with $PYTHON"
        else
            die "cannot make a venv with $PYTHON (on Debian: apt-get install python3-venv)"
        fi
    fi
}

ensure_tools() {
    local stamp
    stamp=$(want_stamp)
    if [[ -x $VENV/bin/schemathesis && -f $VENV/.cart-platform-stamp && $(cat "$VENV/.cart-platform-stamp") == "$stamp" ]]; then
        return 0
    fi
    say "installing schemathesis into $VENV (scripts/api-contract/requirements.txt)"
    local t0=$SECONDS
    rm -rf "$VENV"
    make_venv
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet --no-input \
        --requirement "$REQUIREMENTS" ||
        die "pip install failed (PyPI must be reachable for the first run); $VENV is incomplete and will be remade next time"
    printf '%s\n' "$stamp" >"$VENV/.cart-platform-stamp"
    say "installed in $((SECONDS - t0))s"
}

# One installer at a time (parallel runs share the venv); runs hold a shared lock.
mkdir -p "$(dirname "$VENV")"
exec 8>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then flock 8; fi
ensure_tools
if command -v flock >/dev/null 2>&1; then flock -s 8; fi
ST=$VENV/bin/schemathesis
SUMMARY+=("schemathesis $("$ST" --version 2>/dev/null | sed 's/.*version //')")

# ------------------------------------------------------------------ binaries
BIN_DIR=${E2E_BIN_DIR:-}
have_bins() {
    local d=$1 n
    [[ -n $d ]] || return 1
    for n in "${SERVICES[@]}"; do [[ -x $d/$n ]] || return 1; done
}
if ! have_bins "$BIN_DIR"; then
    if [[ -n $BIN_DIR ]]; then say "E2E_BIN_DIR=$BIN_DIR lacks some binaries; building"; fi
    BIN_DIR=$ROOT/target/debug
    if ((BUILD)); then
        say "cargo build --workspace --bins (debug)"
        SQLX_OFFLINE=true cargo build --workspace --bins >&2 || die "cargo build failed"
    fi
    have_bins "$BIN_DIR" || die "the five binaries are not all in $BIN_DIR (run without --no-build)"
fi
say "binaries: $BIN_DIR"

# ------------------------------------------------------------------ datastores
TMP=$(mktemp -d "${TMPDIR:-/tmp}/api-contract.XXXXXX")
chmod 755 "$TMP" # the postgres user must traverse it when we are root
mkdir -p "$TMP/logs"
PSQL=$(ds_pg_tool psql) || die "psql not found"
RUN_ID=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')

if [[ -n ${DATABASE_URL:-} ]]; then
    say "using Postgres from DATABASE_URL (a fresh database for this run)"
    ADMIN_URL=$DATABASE_URL
else
    pg_base=$TMP
    if ! ds_pg_can_reach "$pg_base"; then
        pg_base=$(mktemp -d /tmp/api-contract-pg.XXXXXX)
        chmod 755 "$pg_base"
    fi
    for attempt in 1 2 3; do
        port=$(ds_free_port)
        PG_DATA=$pg_base/pg-$port
        if ds_pg_start "$PG_DATA" "$port" "$TMP/logs/postgres.log" throwaway; then break; fi
        ds_pg_stop "$PG_DATA" || true
        PG_DATA=""
        ((attempt < 3)) || die "could not start a throwaway Postgres"
    done
    ADMIN_URL=postgres://postgres@127.0.0.1:$port/postgres
fi
RUN_DB=api_contract_$RUN_ID
"$PSQL" -X -q "$ADMIN_URL" -v ON_ERROR_STOP=1 -c "create database \"$RUN_DB\"" </dev/null >/dev/null ||
    { RUN_DB=""; die "cannot create a database through DATABASE_URL (must be a superuser URL)"; }
# The run's database: the admin URL with its database name replaced.
RUN_DB_URL=$("$PYTHON" - "$ADMIN_URL" "$RUN_DB" <<'PY'
import sys
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
print(urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
PY
)

REDIS_URL_GIVEN=${REDIS_URL:-}
if [[ -n $REDIS_URL_GIVEN ]]; then
    say "using Redis from REDIS_URL"
    RUN_REDIS_URL=$REDIS_URL
else
    for attempt in 1 2 3; do
        REDIS_PORT=$(ds_free_port)
        if ds_redis_start "$TMP/redis" "$REDIS_PORT" "$TMP/redis.pid" "$TMP/logs/redis.log" throwaway; then break; fi
        ds_redis_stop "$REDIS_PORT" "$TMP/redis.pid" nosave || true
        REDIS_PORT=""
        ((attempt < 3)) || die "could not start a throwaway Redis"
    done
    RUN_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
fi
KEY_PREFIX="api-contract:$RUN_ID:"

# ------------------------------------------------------------------ services
declare -A PORT=()
for n in "${SERVICES[@]}" gateway-tight-limits; do
    while :; do
        p=$(ds_free_port)
        # distinct ports (ds_free_port only checks that nobody listens yet)
        if [[ " ${PORT[*]:-} " != *" $p "* ]]; then break; fi
    done
    PORT[$n]=$p
done
url() { printf 'http://127.0.0.1:%s' "${PORT[$1]}"; }
GATEWAY=$(url gateway)
INTERNAL_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n') # 48 characters
mkdir -p "$TMP/auth-keys"

spawn() { # NAME [LABEL LISTEN_PORT VAR=VALUE...]: start one service in a clean environment,
    # as the e2e harness does; LABEL names its log and pid (default: NAME)
    local name=$1 label=${2:-$1} port=${3:-}
    shift $(($# < 3 ? $# : 3))
    local -a extra=("$@")
    if [[ -n $port ]]; then extra+=("GATEWAY_LISTEN=127.0.0.1:$port"); fi
    env -i PATH="$PATH" HOME="$HOME" TMPDIR="${TMPDIR:-/tmp}" \
        DATABASE_URL="$RUN_DB_URL" \
        REDIS_URL="$RUN_REDIS_URL" \
        REDIS_KEY_PREFIX="$KEY_PREFIX" \
        INTERNAL_TOKEN="$INTERNAL_TOKEN" \
        GATEWAY_LISTEN="127.0.0.1:${PORT[gateway]}" \
        AUTH_LISTEN="127.0.0.1:${PORT[auth-svc]}" \
        SESSION_LISTEN="127.0.0.1:${PORT[session-svc]}" \
        CART_LISTEN="127.0.0.1:${PORT[cart-svc]}" \
        CLEANUP_LISTEN="127.0.0.1:${PORT[cleanup-worker]}" \
        AUTH_URL="$(url auth-svc)" \
        SESSION_URL="$(url session-svc)" \
        CART_URL="$(url cart-svc)" \
        AUTH_SIGNING_KEYS_DIR="$TMP/auth-keys" \
        RUST_LOG="info" \
        RUST_BACKTRACE=1 \
        ${extra[@]+"${extra[@]}"} \
        "$BIN_DIR/$name" >"$TMP/logs/$label.log" 2>&1 </dev/null &
    PIDS[$label]=$!
}

wait_for() { # PATH NAME...: until each named service answers 200 on PATH (60 s)
    local path=$1 name deadline=$((SECONDS + 60))
    shift
    for name in "$@"; do
        until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$(url "$name")$path" 2>/dev/null) == 200 ]]; do
            if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
                ds_tail_log "$TMP/logs/$name.log" 40
                die "$name exited during start-up"
            fi
            if ((SECONDS >= deadline)); then
                ds_tail_log "$TMP/logs/$name.log" 40
                die "$name did not answer 200 on $path within 60 s"
            fi
            sleep 0.2
        done
    done
}

say "starting the services (gateway on $GATEWAY)"
# auth-svc and cart-svc migrate at start: they listen once migrated.
spawn auth-svc
spawn cart-svc
wait_for /livez auth-svc cart-svc
spawn session-svc
spawn cleanup-worker
# The gateway fuzzed by the main runs: its per-client rate limiter (on by default: 20
# requests/s per client, 10 logins/min per IP) raised out of the way, or the fuzzer
# would see little but 429s. A second gateway has tight limits (2 requests/s, bursts of
# 5: one schemathesis worker on debug builds stays under the default 20/s) for the
# rate-limits run, which checks that their 429s are documented too.
spawn gateway gateway "${PORT[gateway]}" \
    RATE_LIMIT_PER_SECOND=1000000 RATE_LIMIT_BURST=1000000 \
    RATE_LIMIT_AUTH_PER_MINUTE=1000000 RATE_LIMIT_AUTH_BURST=1000000
spawn gateway gateway-tight-limits "${PORT[gateway-tight-limits]}" \
    RATE_LIMIT_PER_SECOND=2 RATE_LIMIT_BURST=5
wait_for /readyz "${SERVICES[@]}" gateway-tight-limits
say "all five ready (and the second gateway, tight rate limits, on $(url gateway-tight-limits))"

curl -sf -o "$TMP/openapi.json" "$GATEWAY/openapi.json" || die "GET /openapi.json failed"
N_OPS=$("$VENV/bin/python" -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(sum(1 for p in d.get("paths", {}).values() for m in p if m in ("get","put","post","delete","patch","head","options")))
' "$TMP/openapi.json")
SUMMARY+=("OpenAPI document: $N_OPS operations")

new_session() { # [GATEWAY_URL]: print the session_token of a new guest session
    local body
    body=$(curl -sf -X POST "${1:-$GATEWAY}/api/v1/sessions") || die "POST /api/v1/sessions failed"
    "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["session_token"])' <<<"$body"
}

# ------------------------------------------------------------------ schemathesis
REPORT_DIR=$ROOT/target/api-contract
rm -rf "$REPORT_DIR/main" "$REPORT_DIR/session-end" "$REPORT_DIR/login" "$REPORT_DIR/rate-limits" "$REPORT_DIR/logs"
mkdir -p "$REPORT_DIR"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
STATUS=0

# st_run NAME GATEWAY_URL BUDGET_SECS [schemathesis options...]: one schemathesis run
# with a session of its own; the reports go to target/api-contract/NAME/.
st_run() {
    local name=$1 gw=$2 budget=$3 rc=0 token t0=$SECONDS
    shift 3
    token=$(new_session "$gw")
    say "schemathesis ($name): --max-examples $MAX_EXAMPLES --max-time $budget --seed $SEED"
    # `timeout` is the hard stop should a phase overrun --max-time. Run from the temp dir:
    # schemathesis leaves a .schemathesis/ directory in its working directory.
    (cd "$TMP" && exec timeout --kill-after=10 $((budget + 30)) \
        "$ST" run "$gw/openapi.json" \
        --checks "$CHECKS" \
        --max-examples "$MAX_EXAMPLES" \
        --max-time "$budget" \
        --seed "$SEED" \
        --workers "$WORKERS" \
        --request-timeout 10 \
        --generation-database none \
        --generation-with-security-parameters false \
        --no-color \
        --header "X-Session-Token: $token" \
        --report junit,ndjson,pytest \
        --report-dir "$REPORT_DIR/$name" \
        "$@" </dev/null) || rc=$?
    if ((rc == 124 || rc == 137)); then
        say "schemathesis ($name) overran its time budget and was stopped"
    fi
    SUMMARY+=("schemathesis $name: $(((rc == 0)) && echo passed || echo "FAILED (exit $rc)") in $((SECONDS - t0))s; reports in target/api-contract/$name/")
    return "$rc"
}

# Everything but the end of the session, which would log every later request out.
# The operations that end the caller's session: DELETE /api/v1/session, and a successful
# login (the guest session it carries is merged and ended; the examples phase registers
# the document's example account, then logs in with it). They would turn every later
# request of a run into a 401, so each runs apart, with a session of its own.
st_run main "$GATEWAY" "$MAX_TIME" --exclude-path-regex '^/api/v1/(session|auth/login)$' || STATUS=1
st_run session-end "$GATEWAY" 10 --include-path /api/v1/session || STATUS=1
st_run login "$GATEWAY" 10 --include-path /api/v1/auth/login || STATUS=1
# The cart operations against tight rate limits: a client that goes too fast gets
# 429 + Retry-After, which the document must allow.
st_run rate-limits "$(url gateway-tight-limits)" 10 --include-path-regex '^/api/v1/cart' ||
    STATUS=1

for n in "${SERVICES[@]}" gateway-tight-limits; do
    kill -0 "${PIDS[$n]}" 2>/dev/null || { say "$n died during the run"; STATUS=1; }
done
# (actix logs a request it cannot parse, e.g. a header with a control character, at
# ERROR: that is the fuzzer's doing and answered 400; left out.)
if grep -h -E '"level":"(ERROR|error)"|panicked' "$TMP"/logs/{gateway,gateway-tight-limits,auth-svc,session-svc,cart-svc}.log 2>/dev/null |
    grep -v '"target":"actix_http::h1::dispatcher"' >"$TMP/errors.txt"; then
    say "errors logged by the services during the run:"
    head -n 20 "$TMP/errors.txt" | cut -c1-400 | sed 's/^/    /' >&2
    SUMMARY+=("$(wc -l <"$TMP/errors.txt") error lines in the service logs (first ones above)")
fi
if ((STATUS != 0)); then
    SUMMARY+=("reproduce a failure: the pytest files in target/api-contract/*/ or --seed $SEED")
fi
exit "$STATUS"
