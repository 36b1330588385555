#!/usr/bin/env bash
# Benchmark the accounts feature through the gateway, with the whole platform running:
# logins per second with the configured argon2 parameters (and how auth-svc sheds the
# excess), and a cart read on the authenticated path (JWT check + session touch) next to
# the same read on the guest path, with the CPU each process spends per request, and
# write the figures into docs/PERFORMANCE.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-auth.sh [--quick] [options]

In one run, on this machine, loopback only:
  1. cargo build --release --workspace --bins
  2. a throwaway Postgres (durable: fsync and synchronous_commit on, as in production)
     and Redis (no persistence) on free ports, in a temp dir on disk
  3. the five binaries (gateway, auth-svc, session-svc, cart-svc, cleanup-worker) on free
     ports, as scripts/up.sh starts them, with their defaults (argon2id, hashing pool and
     shedding included) except RUST_LOG=warn and a 1-hour access-token lifetime; auth-svc
     generates its signing key in the temp dir
  4. seeding through the gateway: N users registered and each logged in once (their
     access tokens), N guest sessions, one item put in every cart
  5. wrk (closed loop: C connections, each sends its next request when the previous
     answer arrives), D seconds each, through the gateway:
       login, C conns     POST /api/v1/auth/login for a random seeded user
       login, idle        the same with 2 connections: one login on an idle machine
       cart read, guest   GET /api/v1/cart with a random guest's X-Session-Token
       cart read, user    GET /api/v1/cart with a random user's Bearer token
  6. the statuses (200 vs 503 shed by auth-svc's hashing pool), the latencies, and the
     CPU time of every service, Postgres, Redis and wrk per request (/proc); `uptime`
     before each phase
  7. a Markdown report, printed and written to docs/PERFORMANCE.md, section
     "## Accounts (scripts/bench-auth.sh)" (a re-run replaces its generated block and
     keeps the hand-written analysis and every other section)

A phase during which other processes used more than 10% of the machine, or that started
with a load average above the number of CPUs, is flagged in the report.

Options:
  --quick               5 s phases, 50 users; does not touch docs/PERFORMANCE.md unless
                        --doc is given (for testing the script)
  --duration SECS       seconds per measured phase (default 15; 5 with --quick)
  --connections N       wrk connections of the loaded phases (default 32)
  --idle-connections N  wrk connections of the idle login phase (default 2)
  --threads N           wrk threads (default 2)
  --users N             users and guest sessions seeded (default 200; 50 with --quick)
  --doc / --no-doc      write / do not write docs/PERFORMANCE.md (default: write, unless --quick)
  --no-build            use the existing target/release binaries
  --keep                keep the temp dir (datastores, logs, tokens) instead of deleting it
  -h, --help            this text

Raw outputs (wrk, /metrics before and after, logs, the report) go to
target/bench-auth/<UTC time>/ (target/bench-auth/latest). Environment:
  BENCH_TMPDIR   parent of the temp dir (default /var/tmp: on disk, so Postgres' fsync is real)
  BENCH_NICE     priority of everything the run starts after the build (default -10 when
                 allowed; 0 leaves it)
  AUTH_ARGON2_MEMORY_KIB AUTH_ARGON2_ITERATIONS AUTH_ARGON2_PARALLELISM
  AUTH_HASH_CONCURRENCY AUTH_HASH_MAX_WAITING AUTH_HASH_MAX_WAIT_MS HTTP_WORKERS
                 passed through to the services (unset: their defaults, see README.md)
Needs cargo, postgresql, redis-server and redis-tools, curl and wrk (installed with
apt-get when missing and run as root).
EOF
}

# ------------------------------------------------------------------ options
QUICK=0
DURATION=""
CONNS=32
IDLE_CONNS=2
THREADS=2
USERS=""
WRITE_DOC=""
BUILD=1
KEEP=0
ARGS_GIVEN=("$@")
while (($# > 0)); do
    case $1 in
        --quick) QUICK=1 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift ;;
        --connections) CONNS=${2:?--connections needs a value}; shift ;;
        --idle-connections) IDLE_CONNS=${2:?--idle-connections needs a value}; shift ;;
        --threads) THREADS=${2:?--threads needs a value}; shift ;;
        --users) USERS=${2:?--users needs a value}; shift ;;
        --doc) WRITE_DOC=1 ;;
        --no-doc) WRITE_DOC=0 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'bench-auth: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $DURATION ]]; then DURATION=$((QUICK ? 5 : 15)); fi
if [[ -z $USERS ]]; then USERS=$((QUICK ? 50 : 200)); fi
if [[ -z $WRITE_DOC ]]; then WRITE_DOC=$((QUICK ? 0 : 1)); fi
for v in DURATION CONNS IDLE_CONNS THREADS USERS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { printf 'bench-auth: %s must be a positive integer\n' "$v" >&2; exit 2; }
done
# A phase is disturbed when other processes use more than this share of the machine.
DISTURBED_PCT=10
# Parallel curl loops for seeding (each login is a password hash: keep it under the
# hashing pool's queue so nothing is shed while seeding).
SEED_PAR=4

# No stdin (CI, nohup): nothing may wait on it.
exec </dev/null

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_DIR=$ROOT/scripts/bench
DOC=$ROOT/docs/PERFORMANCE.md
SECTION_TITLE="## Accounts (scripts/bench-auth.sh)"
MARK=bench-auth

DS_TAG="bench-auth"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"

say() { printf '[bench-auth] %s\n' "$*" >&2; }
die() {
    printf '[bench-auth] ERROR: %s\n' "$*" >&2
    exit 1
}

SERVICES=(gateway auth-svc session-svc cart-svc cleanup-worker)
declare -A LISTEN_VAR=(
    [gateway]=GATEWAY_LISTEN [auth-svc]=AUTH_LISTEN [session-svc]=SESSION_LISTEN
    [cart-svc]=CART_LISTEN [cleanup-worker]=CLEANUP_LISTEN
)

# ------------------------------------------------------------------ clean-up
TMP=""
PG_DATA=""
REDIS_PORT=""
declare -A PIDS=()
START=$SECONDS

stop_services() {
    local svc pid i alive
    ((${#PIDS[@]} > 0)) || return 0
    for svc in "${!PIDS[@]}"; do
        kill -TERM "${PIDS[$svc]}" 2>/dev/null || true
    done
    for ((i = 0; i < 150; i++)); do
        alive=0
        for svc in "${!PIDS[@]}"; do
            if kill -0 "${PIDS[$svc]}" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for svc in "${!PIDS[@]}"; do
        pid=${PIDS[$svc]}
        if kill -0 "$pid" 2>/dev/null; then
            say "$svc (pid $pid) did not stop on SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# shellcheck disable=SC2317 # invoked from traps
on_exit() {
    local rc=$?
    trap '' INT TERM
    # Seeding loops still running (a failure while seeding).
    local j
    for j in $(jobs -p); do kill -TERM "$j" 2>/dev/null || true; done
    stop_services || true
    if [[ -n $PG_DATA ]]; then ds_pg_stop "$PG_DATA" || true; fi
    if [[ -n $REDIS_PORT ]]; then ds_redis_stop "$REDIS_PORT" "$TMP/redis.pid" nosave || true; fi
    if [[ -n $TMP ]]; then
        if [[ -n ${OUT:-} && -d $OUT ]]; then cp "$TMP"/*.log "$OUT"/ 2>/dev/null || true; fi
        if ((KEEP)); then say "kept $TMP"; else rm -rf "$TMP" || true; fi
    fi
    local took=$((SECONDS - START))
    if ((rc == 0)); then
        say "done in $((took / 60))m$(printf %02d $((took % 60)))s"
    else
        say "FAILED (exit $rc) after ${took}s"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ tools
command -v cargo >/dev/null 2>&1 || ((!BUILD)) || die "cargo not found: install the Rust toolchain"
ds_ensure_packages postgres redis curl
if ! command -v wrk >/dev/null 2>&1; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } ||
            die "apt-get install wrk failed"
    else
        die "wrk not found: install it (apt-get install wrk)"
    fi
fi
PSQL=$(ds_pg_tool psql) || die "psql not found"
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# ------------------------------------------------------------------ build
BUILD_SECS=""
if ((BUILD)); then
    say "cargo build --release --workspace --bins (waits if another build holds the target dir)"
    t0=$SECONDS
    SQLX_OFFLINE=true cargo build --release --workspace --bins >&2 || die "release build failed"
    BUILD_SECS=$((SECONDS - t0))
fi
BIN_DIR=$ROOT/target/release
for svc in "${SERVICES[@]}"; do
    [[ -x $BIN_DIR/$svc ]] || die "$BIN_DIR/$svc missing (run without --no-build)"
done
BENCH_T0=$SECONDS
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock migrations 2>/dev/null) ]]; then
    DIRTY=" (with uncommitted changes under crates/ or migrations/)"
fi

# Everything started from here on inherits this priority, so niced work elsewhere on the
# machine (a build) yields to it. It changes nothing when the machine is otherwise idle.
NICE_NOTE=""
BENCH_NICE=${BENCH_NICE:--10}
if [[ $BENCH_NICE != 0 ]] && renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1; then
    NICE_NOTE="at nice $BENCH_NICE"
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-auth/$STAMP
mkdir -p "$OUT"
ln -sfn "$STAMP" "$ROOT/target/bench-auth/latest"
say "raw outputs: $OUT"

# ------------------------------------------------------------------ datastores
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bench-auth.XXXXXX")
chmod 755 "$TMP" # the postgres user must traverse it when we are root
FS_TYPE=$(df --output=fstype "$TMP" 2>/dev/null | tail -n 1 | tr -d ' ')

PG_PORT=$(ds_free_port)
PG_DATA=$TMP/pg
ds_pg_start "$PG_DATA" "$PG_PORT" "$TMP/postgres.log" persistent || die "could not start Postgres"
DB=cart_platform
ds_pg_create_db "$PG_PORT" "$DB"
PG_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
psql_q() { "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 -tA "$@"; }

REDIS_PORT=$(ds_free_port)
ds_redis_start "$TMP/redis" "$REDIS_PORT" "$TMP/redis.pid" "$TMP/redis.log" throwaway ||
    die "could not start Redis"
REDIS_PID=$(cat "$TMP/redis.pid")

# ------------------------------------------------------------------ services
INTERNAL_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export INTERNAL_TOKEN
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export RUST_LOG=warn
export AUTH_SIGNING_KEYS_DIR=$TMP/auth-keys
export AUTH_ACCESS_TOKEN_TTL_SECS=3600 # the seeded tokens must outlive the run
mkdir -p "$AUTH_SIGNING_KEYS_DIR"
chmod 700 "$AUTH_SIGNING_KEYS_DIR"
declare -A PORT=()
for svc in "${SERVICES[@]}"; do
    # Distinct ports even if ds_free_port draws the same free one twice.
    while :; do
        p=$(ds_free_port)
        [[ " ${PORT[*]} " == *" $p "* ]] || break
    done
    PORT[$svc]=$p
    export "${LISTEN_VAR[$svc]}=127.0.0.1:$p"
done
export AUTH_URL=http://127.0.0.1:${PORT[auth-svc]}
export SESSION_URL=http://127.0.0.1:${PORT[session-svc]}
export CART_URL=http://127.0.0.1:${PORT[cart-svc]}
GW=http://127.0.0.1:${PORT[gateway]}

for svc in auth-svc cart-svc; do
    say "$svc migrate"
    "$BIN_DIR/$svc" migrate >>"$TMP/$svc.log" 2>&1 || { ds_tail_log "$TMP/$svc.log"; die "$svc migrate failed"; }
done
for svc in "${SERVICES[@]}"; do
    "$BIN_DIR/$svc" >>"$TMP/$svc.log" 2>&1 &
    PIDS[$svc]=$!
done
deadline=$((SECONDS + 60))
for svc in "${SERVICES[@]}"; do
    until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${PORT[$svc]}/readyz" 2>/dev/null) == 200 ]]; do
        kill -0 "${PIDS[$svc]}" 2>/dev/null || { ds_tail_log "$TMP/$svc.log"; die "$svc exited at start"; }
        ((SECONDS < deadline)) || { ds_tail_log "$TMP/$svc.log"; die "$svc not ready within 60 s"; }
        sleep 0.2
    done
done
say "platform up: gateway $GW (auth :${PORT[auth-svc]}, session :${PORT[session-svc]}, cart :${PORT[cart-svc]}; Postgres :$PG_PORT, Redis :$REDIS_PORT)"

# ------------------------------------------------------------------ seed
# seed_worker K: users K, K+SEED_PAR, ...: register, log in (access token), start a guest
# session, put one item in both carts. Writes $TMP/seed.K.{users,guests,codes}.
seed_worker() {
    local k=$1 i email pass body code tok
    local users=$TMP/seed.$k.users guests=$TMP/seed.$k.guests codes=$TMP/seed.$k.codes
    : >"$users"
    : >"$guests"
    : >"$codes"
    for ((i = k; i < USERS; i += SEED_PAR)); do
        email=bench-$i@example.com
        pass=bench-password-$i
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GW/api/v1/auth/register" \
            -H 'content-type: application/json' -d "{\"email\":\"$email\",\"password\":\"$pass\"}")
        echo "register $code" >>"$codes"
        body=$(curl -s -w '\n%{http_code}' -X POST "$GW/api/v1/auth/login" \
            -H 'content-type: application/json' -d "{\"email\":\"$email\",\"password\":\"$pass\"}")
        echo "login ${body##*$'\n'}" >>"$codes"
        tok=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$body")
        if [[ -n $tok ]]; then
            printf '%s %s\n' "$email" "$pass" >>"$TMP/seed.$k.logins"
            printf '%s\n' "$tok" >>"$users"
            code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GW/api/v1/cart/items" \
                -H "authorization: Bearer $tok" -H 'content-type: application/json' \
                -d '{"product_id":"sku-1","quantity":1}')
            echo "user-item $code" >>"$codes"
        fi
        body=$(curl -s -w '\n%{http_code}' -X POST "$GW/api/v1/sessions")
        echo "session ${body##*$'\n'}" >>"$codes"
        tok=$(sed -n 's/.*"session_token":"\([^"]*\)".*/\1/p' <<<"$body")
        if [[ -n $tok ]]; then
            printf '%s\n' "$tok" >>"$guests"
            code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GW/api/v1/cart/items" \
                -H "x-session-token: $tok" -H 'content-type: application/json' \
                -d '{"product_id":"sku-1","quantity":1}')
            echo "guest-item $code" >>"$codes"
        fi
    done
}
say "seeding $USERS users (register + login) and $USERS guest sessions, one item in each cart"
t0=$EPOCHREALTIME
seed_pids=()
for ((k = 0; k < SEED_PAR; k++)); do
    : >"$TMP/seed.$k.logins"
    seed_worker "$k" &
    seed_pids+=($!)
done
for p in "${seed_pids[@]}"; do wait "$p" || die "a seeding loop failed"; done
SEED_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
LOGINS_FILE=$TMP/logins.txt
USER_TOKENS=$TMP/user-tokens.txt
GUEST_TOKENS=$TMP/guest-tokens.txt
cat "$TMP"/seed.*.logins >"$LOGINS_FILE"
cat "$TMP"/seed.*.users >"$USER_TOKENS"
cat "$TMP"/seed.*.guests >"$GUEST_TOKENS"
cat "$TMP"/seed.*.codes | sort | uniq -c | sed 's/^ */  /' >"$OUT/seed-codes.txt"
n_users=$(wc -l <"$USER_TOKENS")
n_guests=$(wc -l <"$GUEST_TOKENS")
n_bad=$(grep -c -v -E ' (register|login|session|user-item|guest-item) 20[01]$' "$OUT/seed-codes.txt" || true)
if ((n_users != USERS || n_guests != USERS || n_bad > 0)); then
    cat "$OUT/seed-codes.txt" >&2
    die "seeding: $n_users user tokens, $n_guests guest tokens of $USERS each"
fi
read -r db_users db_carts < <(psql_q -F ' ' -c "SELECT (SELECT count(*) FROM auth.users), (SELECT count(*) FROM cart.carts)" 2>/dev/null || echo "? ?")
say "seeded in ${SEED_SECS}s (Postgres: $db_users users, $db_carts carts)"
ARGON_LINE=$(psql_q -c "SELECT password_hash FROM auth.users LIMIT 1" 2>/dev/null | sed -n 's/^\(\$argon2[^$]*\$v=[0-9]*\$[^$]*\)\$.*/\1/p' || true)

# ------------------------------------------------------------------ sampling
# machine_ticks: BUSY and ALL = busy and total ticks of all CPUs, STEAL = stolen ticks.
machine_ticks() {
    local _cpu user nice sys idle iowait irq softirq steal rest
    read -r _cpu user nice sys idle iowait irq softirq steal rest </proc/stat
    BUSY=$((user + nice + sys + irq + softirq))
    ALL=$((BUSY + idle + iowait + steal))
    STEAL=$steal
}
# client_ms: T = CPU ms of this shell's reaped children (wrk, run in the foreground).
client_ms() {
    local line total=0 re='^([0-9]+)m([0-9]+)\.([0-9]{3})s ([0-9]+)m([0-9]+)\.([0-9]{3})s$'
    times >"$TMP/times"
    { read -r line; read -r line; } <"$TMP/times"
    if [[ $line =~ $re ]]; then
        total=$(((10#${BASH_REMATCH[1]} * 60 + 10#${BASH_REMATCH[2]}) * 1000 + 10#${BASH_REMATCH[3]}))
        total=$((total + (10#${BASH_REMATCH[4]} * 60 + 10#${BASH_REMATCH[5]}) * 1000 + 10#${BASH_REMATCH[6]}))
    fi
    T=$total
}
# cpu_sample VAR: VAR = "gateway auth session cart cleanup pg redis client_ms busy all steal",
# ticks (user + system, all threads, /proc/<pid>/stat) except client_ms. Postgres = the
# postmaster, its reaped children and its live children.
cpu_sample() {
    local -n _s=$1
    local stat line rest pid t pg=0 client svc
    local -a f
    local -A t_of=()
    client_ms
    client=$T
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        pid=${stat#/proc/}
        pid=${pid%/stat}
        rest=${line##*) }
        read -ra f <<<"$rest" # f[1] = ppid; f[11] = utime; f[12] = stime; f[13..14] = children's
        t=$((f[11] + f[12]))
        if [[ $pid == "$PG_PID" ]]; then
            pg=$((pg + t + f[13] + f[14]))
        elif [[ ${f[1]} == "$PG_PID" ]]; then
            pg=$((pg + t))
        else
            t_of[$pid]=$t
        fi
    done
    machine_ticks
    _s=""
    for svc in "${SERVICES[@]}"; do _s+="${t_of[${PIDS[$svc]}]:-0} "; done
    _s+="$pg ${t_of[$REDIS_PID]:-0} $client $BUSY $ALL $STEAL"
}
metrics_all() { # SUFFIX: /metrics of the gateway and auth-svc
    curl -s "$GW/metrics" >"$OUT/metrics-gateway.$1" || : >"$OUT/metrics-gateway.$1"
    curl -s "http://127.0.0.1:${PORT[auth-svc]}/metrics" >"$OUT/metrics-auth.$1" || : >"$OUT/metrics-auth.$1"
}
# route_mean BEFORE AFTER METHOD ROUTE STATUS: "count mean_ms" of the requests METHOD ROUTE
# answered STATUS during the phase, from http_server_request_duration_seconds.
route_mean() {
    awk -v m="http_request_method=\"$3\"" -v r="http_route=\"$4\"" -v s="http_response_status_code=\"$5\"" '
        FNR == 1 { f++ }
        index($0, "http_server_request_duration_seconds_") == 1 && index($0, m) && index($0, r) && index($0, s) {
            kind = ($0 ~ /^http_server_request_duration_seconds_count/) ? "c" : ($0 ~ /^http_server_request_duration_seconds_sum/) ? "s" : ""
            if (kind == "") next
            v[f, kind] += $NF
        }
        END { c = v[2, "c"] - v[1, "c"]; sm = v[2, "s"] - v[1, "s"]
              if (c > 0) printf "%d %.2f\n", c, 1000 * sm / c; else print "0 –" }' "$1" "$2"
}
kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" "$2" | head -n 1; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }

ROWS=$TMP/rows.tsv   # name label conns rps ok_rps p50 p90 p99 statuses mean200 load flag
CPUROWS=$TMP/cpu.tsv # label, µs per request: gateway auth session cart cleanup pg redis wrk other busy%
NOTES=$TMP/notes.md
LOADS=$TMP/loads.md
: >"$ROWS"
: >"$CPUROWS"
: >"$NOTES"
: >"$LOADS"

# phase NAME LABEL MODE FILE CONNS
phase() {
    local name=$1 label=$2 mode=$3 file=$4 conns=$5 threads=$THREADS
    local out=$OUT/wrk-$name.txt before after up load1 flag="" reqs dur rps ok okrps
    ((threads <= conns)) || threads=$conns
    # 2 s unmeasured: connections opened, caches and pools warm.
    wrk -t"$threads" -c"$conns" -d2s -s "$BENCH_DIR/auth.lua" "$GW" -- "$mode" "$file" >/dev/null 2>&1 || true
    sleep 1
    up=$(uptime)
    load1=$(cut -d ' ' -f 1 /proc/loadavg)
    printf -- '- %s: `%s`\n' "$label" "$(sed 's/^ *//' <<<"$up")" >>"$LOADS"
    say "phase $name: wrk -t$threads -c$conns -d${DURATION}s ($label); load average ${up##*average: }"
    metrics_all before
    cpu_sample before
    wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "$BENCH_DIR/auth.lua" "$GW" \
        -- "$mode" "$file" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed"; }
    cpu_sample after
    metrics_all after
    grep -q '^BENCH ' "$out" || { cat "$out" >&2; die "wrk printed no summary"; }
    reqs=$(kv requests "$out")
    dur=$(kv duration_us "$out")
    ok=$(kv s2xx "$out")
    rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    okrps=$(awk -v r="$ok" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    local statuses sock
    statuses=$(awk -v a="$(kv s2xx "$out")" -v b="$(kv s401 "$out")" -v c="$(kv s429 "$out")" \
        -v d="$(kv s503 "$out")" -v e="$(kv sother "$out")" 'BEGIN {
        s = "2xx: " a; if (b) s = s ", 401: " b; if (c) s = s ", 429: " c; if (d) s = s ", 503: " d; if (e) s = s ", other: " e; print s }')
    sock=$(($(kv connect_errors "$out") + $(kv read_errors "$out") + $(kv write_errors "$out") + $(kv timeouts "$out")))
    if ((sock > 0)); then statuses+=", socket errors: $sock"; fi
    # Mean latency of the 200s alone, inside the gateway (a login phase mixes fast 503s in).
    local route method gw200 auth200
    if [[ $mode == login ]]; then route=/api/v1/auth/login method=POST; else route=/api/v1/cart method=GET; fi
    gw200=$(route_mean "$OUT/metrics-gateway.before" "$OUT/metrics-gateway.after" "$method" "$route" 200)
    cp "$OUT/metrics-gateway.before" "$OUT/metrics-gateway-$name.before"
    cp "$OUT/metrics-gateway.after" "$OUT/metrics-gateway-$name.after"
    cp "$OUT/metrics-auth.before" "$OUT/metrics-auth-$name.before"
    cp "$OUT/metrics-auth.after" "$OUT/metrics-auth-$name.after"
    # CPU per request (µs) of each process, per 2xx for auth-svc in a login phase too.
    local cols disturbed
    cols=$(awk -v b="$before" -v a="$after" -v n="$reqs" -v ok="$ok" -v hz="$CLK_TCK" 'BEGIN {
        nb = split(b, B, " "); split(a, A, " ")
        us = 1e6 / hz; ours = 0
        for (i = 1; i <= 7; i++) { d[i] = (A[i] - B[i]) * us; ours += d[i] }
        cl = (A[8] - B[8]) * 1000; ours += cl
        busy = (A[9] - B[9]) * us; tot = (A[10] - B[10]) * us; steal = (A[11] - B[11]) * us
        oth = busy - ours; if (oth < 0) oth = 0
        for (i = 1; i <= 7; i++) printf "%.0f\t", d[i] / n
        printf "%.0f\t%.0f\t%.0f\t%.0f\t%.0f\n", cl / n, oth / n, tot ? 100 * busy / tot : 0,
            ok ? d[2] / ok : 0, tot ? 100 * (oth + steal) / tot : 0
    }')
    disturbed=${cols##*$'\t'}
    cols=${cols%$'\t'*}
    local auth_per_ok=${cols##*$'\t'}
    cols=${cols%$'\t'*}
    if ((disturbed > DISTURBED_PCT)); then
        flag="⚠"
        printf -- '- ⚠ %s: %s%% of the machine went to other work during the phase.\n' "$label" "$disturbed" >>"$NOTES"
    fi
    if awk -v l="$load1" -v n="$NCPU" 'BEGIN { exit !(l > n) }'; then
        flag="⚠"
        printf -- '- ⚠ %s: started with a 1-minute load average of %s on %s CPUs.\n' "$label" "$load1" "$NCPU" >>"$NOTES"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$label" "$conns" "$rps" "$okrps" \
        "$(ms "$(kv p50_us "$out")")" "$(ms "$(kv p90_us "$out")")" "$(ms "$(kv p99_us "$out")")" \
        "$statuses" "${gw200#* }" "$load1" "$flag" "$auth_per_ok" >>"$ROWS"
    printf '%s\t%s\t%s\n' "$label" "$cols" "$flag" >>"$CPUROWS"
    say "  $rps req/s ($okrps 2xx/s), p50 $(ms "$(kv p50_us "$out")") ms, p99 $(ms "$(kv p99_us "$out")") ms; $statuses; other work ${disturbed}%"
    say "  CPU µs/req gateway,auth,session,cart,cleanup,pg,redis,wrk,other,busy%: $(tr '\t' ',' <<<"$cols"); auth-svc µs per 2xx: $auth_per_ok"
}

LOAD_START=$(uptime | sed 's/^ *//')
phase login "login, $CONNS conns" login "$LOGINS_FILE" "$CONNS"
phase login-idle "login, $IDLE_CONNS conns" login "$LOGINS_FILE" "$IDLE_CONNS"
phase cart-guest "cart read, guest" guest "$GUEST_TOKENS" "$CONNS"
phase cart-user "cart read, user" user "$USER_TOKENS" "$CONNS"

# ------------------------------------------------------------------ report
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_G=$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
PG_VERSION=$("$(ds_pg_bindir)/postgres" --version)
REDIS_VERSION=$(redis-server --version | awk '{ print $3 }')
CMD="scripts/bench-auth.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
env_note=""
for v in AUTH_ARGON2_MEMORY_KIB AUTH_ARGON2_ITERATIONS AUTH_ARGON2_PARALLELISM AUTH_HASH_CONCURRENCY \
    AUTH_HASH_MAX_WAITING AUTH_HASH_MAX_WAIT_MS HTTP_WORKERS; do
    if [[ -n ${!v:-} ]]; then env_note+="${env_note:+ }$v=${!v}"; fi
done
if [[ -n $env_note ]]; then CMD="$env_note $CMD"; fi
MEASURE_SECS=$((SECONDS - BENCH_T0))
row() { awk -F '\t' -v n="$1" -v c="$2" '$1 == n { print $c }' "$ROWS"; }
REPORT=$OUT/report.md
{
    echo "<!-- $MARK:begin: generated by scripts/bench-auth.sh; a re-run replaces everything down to $MARK:end -->"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M') UTC with \`$CMD\`${BUILD_SECS:+ (after a ${BUILD_SECS} s \`cargo build --release --workspace --bins\`)};"
    echo "$MEASURE_SECS s of setup and measuring, at commit \`$COMMIT\`$DIRTY."
    echo
    echo "- Machine: $NCPU CPUs ($CPU_MODEL), ${MEM_G} GiB RAM, Linux $(uname -r), data on $FS_TYPE."
    echo "- Load at the start: \`$LOAD_START\` (the machine may be shared with other builds;"
    echo "  \`uptime\` before each phase is listed below)."
    echo "- $PG_VERSION (fsync and synchronous_commit on); Redis $REDIS_VERSION, no persistence."
    echo "- The five services with their defaults (\`HTTP_WORKERS\` = $NCPU, 16 Postgres and 16 Redis connections"
    echo "  each), RUST_LOG=warn, access tokens of 1 hour; argon2id as stored: \`${ARGON_LINE:-?}\`;"
    echo "  hashing pool: \`AUTH_HASH_CONCURRENCY\`=${AUTH_HASH_CONCURRENCY:-$NCPU}, \`AUTH_HASH_MAX_WAITING\`=${AUTH_HASH_MAX_WAITING:-$((4 * NCPU))},"
    echo "  \`AUTH_HASH_MAX_WAIT_MS\`=${AUTH_HASH_MAX_WAIT_MS:-1000}. They share the $NCPU CPUs with Postgres, Redis and wrk${NICE_NOTE:+, all $NICE_NOTE}."
    echo "- Data: $USERS users registered and logged in once, $USERS guest sessions, one item in each"
    echo "  cart, all through the gateway (seeding took ${SEED_SECS} s)."
    echo "- wrk through the gateway, closed loop, $THREADS threads, ${DURATION} s per phase after 2 s of warm-up;"
    echo "  every request picks a random seeded user or session."
    echo
    echo "| phase | conns | req/s | 2xx/s | p50 ms | p90 ms | p99 ms | statuses | mean ms of a 200 (gateway) | load avg at start |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    awk -F '\t' '{ printf "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $2, ($12 ? " " $12 : ""), $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$ROWS"
    echo
    echo "CPU per request in µs (user + system time from \`/proc/<pid>/stat\` over the phase, all"
    echo "threads; Postgres = all its processes; wrk = the load generator; other = the rest of the"
    echo "machine's busy time; busy = share of the $NCPU CPUs in use). A login phase counts the shed"
    echo "503s as requests too; auth-svc's CPU per *successful* login is in the last column."
    echo
    echo "| phase | gateway | auth-svc | session-svc | cart-svc | cleanup-worker | Postgres | Redis | wrk | other | busy | auth-svc per 2xx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    paste "$CPUROWS" <(cut -f 13 "$ROWS") | awk -F '\t' '{ printf "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s%% | %s |\n",
        $1, ($12 ? " " $12 : ""), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, ($1 ~ /^login/ ? $13 : "–") }'
    echo
    echo "\`uptime\` before each phase:"
    echo
    cat "$LOADS"
    if [[ -s $NOTES ]]; then
        echo
        echo "Flagged phases (measured while the machine was busy with other work: read their"
        echo "figures as a lower bound):"
        echo
        cat "$NOTES"
    fi
    echo
    echo "Raw outputs: \`target/bench-auth/<run>/\` (wrk, /metrics of the gateway and auth-svc"
    echo "before and after each phase, the services' logs)."
    echo
    echo "<!-- $MARK:end -->"
} >"$REPORT"
cat "$REPORT"

# ------------------------------------------------------------------ docs/PERFORMANCE.md
# Replace the generated block of our section (or add the section, with a placeholder for
# the hand-written analysis); every other section is left as it is.
write_doc() {
    local new=$TMP/PERFORMANCE.md placeholder=$TMP/placeholder.md
    printf '%s\n' "### Analysis" "" "_To be written by hand from the figures above; a re-run keeps this part._" >"$placeholder"
    if [[ ! -e $DOC ]]; then
        {
            echo "# Performance"
            echo
            echo "Benchmarks of this repository, each with the command that reproduces it and the"
            echo "machine it ran on. Each benchmark script owns one section and rewrites only that."
        } >"$DOC"
    fi
    awk -v title="$SECTION_TITLE" -v report="$REPORT" -v placeholder="$placeholder" -v mark="$MARK" '
        function emit(f,   l) { while ((getline l < f) > 0) print l; close(f) }
        function flush_section(   i, skipping) {
            print title
            if (!has_block) { print ""; emit(report); print ""; emit(placeholder); print ""; done = 1; return }
            skipping = 0
            for (i = 1; i <= n; i++) {
                if (index(buf[i], "<!-- " mark ":begin") == 1) { emit(report); skipping = 1; continue }
                if (skipping && index(buf[i], "<!-- " mark ":end") == 1) { skipping = 0; continue }
                if (!skipping) print buf[i]
            }
            done = 1
        }
        BEGIN { state = "before"; done = 0 }
        state == "before" && $0 == title { state = "in"; n = 0; has_block = 0; next }
        state == "in" && /^## / { state = "after"; flush_section() }
        state == "in" { buf[++n] = $0; if (index($0, "<!-- " mark ":begin") == 1) has_block = 1; next }
        { print }
        END {
            if (state == "in") flush_section()
            if (!done) { print ""; print title; print ""; emit(report); print ""; emit(placeholder) }
        }' "$DOC" >"$new"
    cat "$new" >"$DOC"
}
if ((WRITE_DOC)); then
    write_doc
    say "wrote the section \"$SECTION_TITLE\" of docs/PERFORMANCE.md"
else
    say "docs/PERFORMANCE.md left alone (--quick / --no-doc); the report is in $REPORT"
fi
