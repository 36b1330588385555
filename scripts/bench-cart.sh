#!/usr/bin/env bash
# Benchmark cart-svc alone (reads with a cache hit, with a cache miss, with Redis down,
# and writes) next to the floors of the same machine in the same run (redis-benchmark,
# pgbench with cart-svc's own statements), with the CPU each process spends per
# request, and write the figures into docs/PERFORMANCE.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-cart.sh [--quick] [options]

In one run, on this machine, loopback only:
  1. cargo build --release -p cart-svc
  2. a throwaway Postgres (durable: fsync and synchronous_commit on, as in production)
     and Redis (no persistence: a cache) on free ports, in a temp dir on disk
  3. target/release/cart-svc alone, called directly with the internal headers (as the
     gateway would); N guest carts seeded through it with 3 lines each, then read once
     (warm cache); more carts written straight into Postgres for the cache-miss phase
  4. wrk (closed loop: C connections, each sends its next request when the previous
     answer arrives), D seconds each:
       read, cache hit    GET  /api/v1/cart on a random seeded cart
       read, cache miss   GET  /api/v1/cart on carts never read before (each read once)
       read, Redis down   GET  /api/v1/cart, cart-svc restarted with REDIS_URL on a closed port
       write              POST /api/v1/cart/items {"product_id":"sku-<1..20>","quantity":1}
                          on a random seeded cart
  5. floors: redis-benchmark (GET, SET, the HMGET of a cache hit) and pgbench
     (-M prepared) with cart-svc's statements: the bare line upsert, the whole write
     transaction, the two reads of a cache miss
  6. CPU time of cart-svc, Postgres, Redis, the load generator, the kernel and anything
     else per request (/proc), and a perf profile of cart-svc (when perf works)
  7. a Markdown report, printed and written to docs/PERFORMANCE.md, section
     "## Cart service (scripts/bench-cart.sh)" (a re-run replaces its generated block
     and keeps the hand-written analysis and every other section)

A phase during which other processes used more than 10% of the machine is run again
once after the machine quiets down, and flagged when it is still disturbed.

Options:
  --quick            5 s phases, fewer redis-benchmark requests; does not touch
                     docs/PERFORMANCE.md unless --doc is given (for testing the script)
  --duration SECS    seconds per measured phase (default 15; 5 with --quick)
  --connections N    wrk connections and pgbench/redis-benchmark clients (default 32)
  --threads N        wrk threads (default 2)
  --carts N          guest carts seeded through cart-svc (default 2000)
  --doc / --no-doc   write / do not write docs/PERFORMANCE.md (default: write, unless --quick)
  --no-build         use the existing target/release/cart-svc
  --no-perf          skip the perf profiles
  --keep             keep the temp dir (datastores, logs) instead of deleting it
  -h, --help         this text

Raw outputs (wrk, pgbench, redis-benchmark, perf reports, the report) go to
target/bench-cart/<UTC time>/ (target/bench-cart/latest). Environment:
  BENCH_TMPDIR      parent of the temp dir (default /var/tmp: on disk, so Postgres'
                    fsync is real)
  BENCH_NICE        priority of everything the run starts after the build (default -10
                    when allowed; 0 leaves it)
  BENCH_QUIET_WAIT  seconds the run may spend, in all, waiting for other load to go
                    away and re-running disturbed phases (default 90)
Needs cargo, postgresql, redis-server and redis-tools, curl, wrk (installed with
apt-get when missing and run as root) and optionally perf (linux-perf).
EOF
}

# ------------------------------------------------------------------ options
QUICK=0
DURATION=""
CONNS=32
THREADS=2
CARTS=2000
WRITE_DOC=""
BUILD=1
PERF=1
KEEP=0
ARGS_GIVEN=("$@")
while (($# > 0)); do
    case $1 in
        --quick) QUICK=1 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift ;;
        --connections) CONNS=${2:?--connections needs a value}; shift ;;
        --threads) THREADS=${2:?--threads needs a value}; shift ;;
        --carts) CARTS=${2:?--carts needs a value}; shift ;;
        --doc) WRITE_DOC=1 ;;
        --no-doc) WRITE_DOC=0 ;;
        --no-build) BUILD=0 ;;
        --no-perf) PERF=0 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'bench-cart: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $DURATION ]]; then DURATION=$((QUICK ? 5 : 15)); fi
if [[ -z $WRITE_DOC ]]; then WRITE_DOC=$((QUICK ? 0 : 1)); fi
for v in DURATION CONNS THREADS CARTS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { printf 'bench-cart: %s must be a positive integer\n' "$v" >&2; exit 2; }
done
((THREADS <= CONNS)) || THREADS=$CONNS
REDIS_N=$((QUICK ? 50000 : 200000))
# Carts for the cache-miss phase: more than it can read at 10,000 reads/s.
ONCE_CARTS=$((10000 * DURATION))
PERF_SECS=5
# Seconds the whole run may spend waiting for other load to go away before its phases.
QUIET_BUDGET=${BENCH_QUIET_WAIT:-90}
# A phase is disturbed when other processes use more than this share of the machine.
DISTURBED_PCT=10

# No stdin (CI, nohup): nothing may wait on it.
exec </dev/null

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH_DIR=$ROOT/scripts/bench
DOC=$ROOT/docs/PERFORMANCE.md
SECTION_TITLE="## Cart service (scripts/bench-cart.sh)"

DS_TAG="bench"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"

say() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ clean-up
TMP=""
PG_DATA=""
REDIS_PORT=""
SVC_PID=""
PERF_PID=""
START=$SECONDS

stop_svc() {
    local pid=$SVC_PID i
    [[ -n $pid ]] || return 0
    SVC_PID=""
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "cart-svc (pid $pid) did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked from traps
on_exit() {
    local rc=$?
    trap '' INT TERM
    if [[ -n $PERF_PID ]]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
    fi
    stop_svc || true
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
command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain"
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
command -v redis-benchmark >/dev/null 2>&1 || die "redis-benchmark not found (package redis-tools)"
PG_BIN=$(ds_pg_bindir) || die "Postgres binaries not found"
PSQL=$(ds_pg_tool psql)
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found (package postgresql)"
CLK_TCK=$(getconf CLK_TCK)
HAVE_PERF=0
if ((PERF)) && command -v perf >/dev/null 2>&1 && perf stat -e cpu-clock -- true >/dev/null 2>&1; then
    HAVE_PERF=1
fi

# Do the pgbench scripts still hold cart-svc's statements? Each "--|" block of
# scripts/bench/pg-*.sql must appear (whitespace aside) in crates/cart-svc/src/store.rs.
SQL_DRIFT=""
check_sql_drift() {
    local src f stmt
    src=$(tr -s ' \t\n' '   ' <"$ROOT/crates/cart-svc/src/store.rs")
    for f in "$BENCH_DIR"/pg-*.sql; do
        while IFS= read -r stmt; do
            [[ -n $stmt ]] || continue
            if [[ $src != *"$stmt"* ]]; then
                SQL_DRIFT+="${SQL_DRIFT:+; }$(basename "$f"): \"${stmt:0:60}…\""
            fi
        done < <(awk '
            /^--\|/ {
                line = substr($0, 4); gsub(/[ \t]+/, " ", line); sub(/^ /, "", line); sub(/ $/, "", line)
                if (line == "") { print stmt; stmt = "" } else stmt = stmt (stmt == "" ? "" : " ") line
            }
            END { print stmt }' "$f")
    done
    if [[ -n $SQL_DRIFT ]]; then
        say "WARNING: cart-svc's SQL changed since scripts/bench/pg-*.sql were written: $SQL_DRIFT"
    fi
}
check_sql_drift

# ------------------------------------------------------------------ build
if ((BUILD)); then
    say "cargo build --release -p cart-svc (waits if another build holds the target dir)"
    SQLX_OFFLINE=true cargo build --release -p cart-svc >&2 || die "release build failed"
fi
SVC_BIN=$ROOT/target/release/cart-svc
[[ -x $SVC_BIN ]] || die "$SVC_BIN missing (run without --no-build)"
BENCH_T0=$SECONDS

# Everything started from here on (Postgres, Redis, cart-svc, the load generators)
# inherits this priority, so niced work elsewhere on the machine (a build) yields to
# them. It changes nothing when the machine is otherwise idle.
NICE_NOTE=""
BENCH_NICE=${BENCH_NICE:--10}
if [[ $BENCH_NICE != 0 ]] && renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1; then
    NICE_NOTE="at nice $BENCH_NICE"
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-cart/$STAMP
mkdir -p "$OUT"
ln -sfn "$STAMP" "$ROOT/target/bench-cart/latest"
say "raw outputs: $OUT"

# ------------------------------------------------------------------ datastores
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bench-cart.XXXXXX")
chmod 755 "$TMP" # the postgres user must traverse it when we are root
FS_TYPE=$(df --output=fstype "$TMP" 2>/dev/null | tail -n 1 | tr -d ' ')
if [[ $FS_TYPE == tmpfs || $FS_TYPE == ramfs ]]; then
    say "WARNING: $TMP is on $FS_TYPE: Postgres' fsync costs nothing there (set BENCH_TMPDIR to a disk)"
fi

PG_PORT=$(ds_free_port)
PG_DATA=$TMP/pg
PG_LOG=$TMP/postgres.log
# persistent = Postgres' defaults: fsync, synchronous_commit and full_page_writes on.
ds_pg_start "$PG_DATA" "$PG_PORT" "$PG_LOG" persistent || die "could not start Postgres"
DB=cart_bench
ds_pg_create_db "$PG_PORT" "$DB"
psql_q() { "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 -tA "$@"; }
checkpoint() { psql_q -c CHECKPOINT >/dev/null; }
# Time WAL writes and flushes (pg_stat_wal.wal_sync_time): what a commit waits for.
psql_q -c "ALTER SYSTEM SET track_wal_io_timing = on" -c "SELECT pg_reload_conf()" >/dev/null
PG_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
PG_SETTINGS=$(psql_q -c "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
    FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_sync_method',
    'shared_buffers', 'max_connections')")

REDIS_PORT=$(ds_free_port)
# A cache: no persistence (no fork for snapshots in the middle of a phase).
ds_redis_start "$TMP/redis" "$REDIS_PORT" "$TMP/redis.pid" "$TMP/redis.log" throwaway ||
    die "could not start Redis"
REDIS_PID=$(cat "$TMP/redis.pid")
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# ------------------------------------------------------------------ cart-svc
TOKEN_FILE=$TMP/internal-token
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE"
echo >>"$TOKEN_FILE"
INTERNAL_TOKEN=$(head -n 1 "$TOKEN_FILE")
SVC_PORT=$(ds_free_port)
SVC=http://127.0.0.1:$SVC_PORT
SVC_LOG=$TMP/cart-svc.log

# start_svc REDIS_URL: start cart-svc alone (it migrates at start) and wait for /readyz.
start_svc() {
    local redis_url=$1 i
    INTERNAL_TOKEN=$INTERNAL_TOKEN \
        DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB \
        REDIS_URL=$redis_url \
        CART_LISTEN=127.0.0.1:$SVC_PORT \
        RUST_LOG=warn \
        "$SVC_BIN" >>"$SVC_LOG" 2>&1 &
    SVC_PID=$!
    for ((i = 0; i < 300; i++)); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$SVC/readyz" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        kill -0 "$SVC_PID" 2>/dev/null || { ds_tail_log "$SVC_LOG"; die "cart-svc exited at start"; }
        sleep 0.1
    done
    ds_tail_log "$SVC_LOG"
    die "cart-svc not ready within 30 s"
}
say "starting cart-svc on $SVC (Postgres :$PG_PORT, Redis :$REDIS_PORT)"
start_svc "redis://127.0.0.1:$REDIS_PORT"

# ------------------------------------------------------------------ seed and warm
CARTS_FILE=$TMP/carts.txt
: >"$CARTS_FILE"
for ((i = 0; i < CARTS; i++)); do
    read -r u </proc/sys/kernel/random/uuid
    # A distinct 64-hex token hash per cart (cart-svc stores it, unique, at the first write).
    printf '%s %s%s\n' "$u" "${u//-/}" "${u//-/}" >>"$CARTS_FILE"
done

# curl_batch NAME METHOD PATH BODIES PARALLEL: one request per cart of CARTS_FILE and per
# body of BODIES (bodies separated by '|'; '' for none), spread over PARALLEL keep-alive
# curl processes; the status codes, one per line, go to $TMP/NAME.codes.
curl_batch() {
    local name=$1 method=$2 path=$3 bodies=$4 par=$5 i=0 p id hash body f
    local -a files=() list=() pids=()
    for ((p = 0; p < par; p++)); do
        files+=("$TMP/$name.$p.curl")
        : >"${files[p]}"
    done
    while read -r id hash; do
        f=${files[i % par]}
        list=("")
        if [[ -n $bodies ]]; then IFS='|' read -ra list <<<"$bodies"; fi
        for body in "${list[@]}"; do
            if [[ -s $f ]]; then echo next >>"$f"; fi
            {
                printf 'url = "%s%s"\n' "$SVC" "$path"
                printf 'request = "%s"\n' "$method"
                printf 'header = "x-internal-token: %s"\n' "$INTERNAL_TOKEN"
                printf 'header = "x-identity-kind: guest"\n'
                printf 'header = "x-identity-cart-id: %s"\n' "$id"
                printf 'header = "x-identity-cart-token-hash: %s"\n' "$hash"
                if [[ -n $body ]]; then
                    printf 'header = "content-type: application/json"\n'
                    printf 'data = %s\n' "$body"
                fi
                printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n'
            } >>"$f"
        done
        i=$((i + 1))
    done <"$CARTS_FILE"
    for f in "${files[@]}"; do
        curl -s -K "$f" >"$f.codes" 2>"$f.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    cat "${files[@]/%/.codes}" >"$TMP/$name.codes"
}

t0=$EPOCHREALTIME
say "seeding $CARTS guest carts x 3 lines through POST /api/v1/cart/items"
curl_batch seed POST /api/v1/cart/items \
    '{"product_id":"sku-1","quantity":1}|{"product_id":"sku-2","quantity":2}|{"product_id":"sku-3","quantity":3}' 8
SEED_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
seed_ok=$(grep -c '^200$' "$TMP/seed.codes" || true)
if ((seed_ok != CARTS * 3)); then
    sort "$TMP/seed.codes" | uniq -c >&2
    ds_tail_log "$SVC_LOG"
    die "seeding: $seed_ok of $((CARTS * 3)) requests answered 200"
fi
say "seeded in ${SEED_SECS}s ($((CARTS * 3)) writes, all 200)"
read -r n_carts n_items < <(psql_q -F ' ' -c "SELECT (SELECT count(*) FROM cart.carts), (SELECT count(*) FROM cart.cart_items)")
((n_carts == CARTS && n_items == CARTS * 3)) || die "seeding: $n_carts carts / $n_items lines in Postgres"

say "writing $ONCE_CARTS more carts straight into Postgres (read once each in the cache-miss phase)"
t0=$EPOCHREALTIME
psql_q -v carts="$ONCE_CARTS" -f "$BENCH_DIR/read-once-seed.sql" >/dev/null
say "  took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
ONCE_FILE=$TMP/read-once.txt
psql_q -F ' ' -c "SELECT cart_id, guest_token_hash FROM cart.carts
    WHERE guest_token_hash LIKE 'f00df00df00df00d%' ORDER BY guest_token_hash" >"$ONCE_FILE"
(($(wc -l <"$ONCE_FILE") == ONCE_CARTS)) || die "read-once carts: $(wc -l <"$ONCE_FILE") of $ONCE_CARTS listed"
say "writing $CARTS carts for pgbench (scripts/bench/pg-seed.sql)"
psql_q -v carts="$CARTS" -f "$BENCH_DIR/pg-seed.sql" >/dev/null
# Statistics as a long-running database has them, and a clean start for the WAL.
psql_q -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
DB_SIZE=$(psql_q -c "SELECT pg_size_pretty(pg_database_size(current_database()))")

say "warming: every seeded cart read once"
curl_batch warm GET /api/v1/cart '' 8
warm_ok=$(grep -c '^200$' "$TMP/warm.codes" || true)
((warm_ok == CARTS)) || die "warming: $warm_ok of $CARTS reads answered 200"
read -r FIRST_ID FIRST_HASH <"$CARTS_FILE"
CART_BYTES=$(curl -s "$SVC/api/v1/cart" -H "x-internal-token: $INTERNAL_TOKEN" -H 'x-identity-kind: guest' \
    -H "x-identity-cart-id: $FIRST_ID" | wc -c)

# What one write and one cache-miss read send to Postgres, from its statement log.
statements_of() { # MARK -> the statements logged after the line count MARK, one per line
    tail -n +"$(($1 + 1))" "$PG_LOG" | sed -n -E 's/.*LOG: +(statement|execute [^:]*): *//p' |
        awk '{ s = $0; if (length(s) > 70) s = substr(s, 1, 70) "…"; print s }'
}
psql_q -c "ALTER SYSTEM SET log_statement = 'all'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.3
mark=$(wc -l <"$PG_LOG")
curl -s -o /dev/null "$SVC/api/v1/cart/items" -H "x-internal-token: $INTERNAL_TOKEN" -H 'x-identity-kind: guest' \
    -H "x-identity-cart-id: $FIRST_ID" -H "x-identity-cart-token-hash: $FIRST_HASH" \
    -H 'content-type: application/json' -d '{"product_id":"sku-4","quantity":1}'
sleep 0.3
WRITE_STATEMENTS=$(statements_of "$mark")
rcli del "cart:$FIRST_ID" >/dev/null
mark=$(wc -l <"$PG_LOG")
curl -s -o /dev/null "$SVC/api/v1/cart" -H "x-internal-token: $INTERNAL_TOKEN" -H 'x-identity-kind: guest' \
    -H "x-identity-cart-id: $FIRST_ID"
sleep 0.3
MISS_STATEMENTS=$(statements_of "$mark")
psql_q -c "ALTER SYSTEM RESET log_statement" -c "SELECT pg_reload_conf()" >/dev/null

# ------------------------------------------------------------------ sampling
# Everything here runs in this shell (no subshell, no child process) so that `times`
# sees the load generator's CPU and the sampling adds nothing to what it counts.

# machine_ticks: BUSY and ALL = busy and total ticks (1/CLK_TCK s) of all CPUs, STEAL =
# those the hypervisor gave to someone else (not counted as busy), NICED = user time of
# processes with a positive nice value.
machine_ticks() {
    local _cpu user nice sys idle iowait irq softirq steal rest
    read -r _cpu user nice sys idle iowait irq softirq steal rest </proc/stat
    BUSY=$((user + nice + sys + irq + softirq))
    ALL=$((BUSY + idle + iowait + steal))
    STEAL=$steal
    NICED=$nice
}
# client_ms: T = CPU ms of this shell's reaped children (the load generator, run in the
# foreground and waited for).
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
# svc_switches: T = context switches of all cart-svc's threads so far.
svc_switches() {
    local st line total=0
    for st in /proc/"$SVC_PID"/task/*/status; do
        while read -r line; do
            case $line in
                voluntary_ctxt_switches:* | nonvoluntary_ctxt_switches:*) total=$((total + ${line##*[[:space:]]})) ;;
            esac
        done <"$st" 2>/dev/null || true
    done
    T=$total
}
# cpu_sample VAR PROCS: VAR = "svc pg redis client_ms busy all steal", in ticks (user +
# system CPU from /proc/<pid>/stat, all threads) except client_ms. Postgres is the
# postmaster, its reaped children (backends that ended) and its live children. Every
# other process goes into the associative array PROCS (pid:start -> "kind ticks comm",
# kind k for kernel threads), to name the kernel's share and who disturbed a phase.
cpu_sample() {
    local -n _sample=$1 _procs=$2
    local stat line rest pid ppid t svc=0 pg=0 redis=0 client comm kind
    local -a f
    _procs=()
    client_ms
    client=$T
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        pid=${stat#/proc/}
        pid=${pid%/stat}
        rest=${line##*) }
        read -ra f <<<"$rest" # f[0] = field 3; ppid = f[1]; utime = f[11]; starttime = f[19]
        ppid=${f[1]}
        t=$((f[11] + f[12]))
        if [[ $pid == "$SVC_PID" ]]; then
            svc=$t
        elif [[ $pid == "$REDIS_PID" ]]; then
            redis=$t
        elif [[ $pid == "$PG_PID" ]]; then
            pg=$((pg + t + f[13] + f[14]))
        elif [[ $ppid == "$PG_PID" ]]; then
            pg=$((pg + t))
        elif [[ $pid == "$$" || $ppid == "$$" || $pid == "$BASHPID" ]]; then
            :
        else
            comm=${line#*(}
            comm=${comm%)*}
            kind=u
            if [[ $pid == 2 || $ppid == 2 ]]; then kind=k; fi
            # shellcheck disable=SC2004 # an associative array (through a nameref)
            _procs["$pid:${f[19]}"]="$kind $t ${comm// /_}"
        fi
    done
    machine_ticks
    _sample="$svc $pg $redis $client $BUSY $ALL $STEAL"
}
declare -A PROCS_B=() PROCS_A=()
CB=""
CA=""
# procs_delta: KTHREADS = ticks used during the phase by kernel threads; TOP = the five
# biggest consumers among the processes that are not ours (a process that started and
# ended within the phase is not seen here, but counts in "other" all the same).
procs_delta() {
    local key kind v comm bv
    local -a lines=()
    KTHREADS=0
    for key in "${!PROCS_A[@]}"; do
        read -r kind v comm <<<"${PROCS_A[$key]}"
        if [[ -n ${PROCS_B[$key]:-} ]]; then
            read -r _ bv _ <<<"${PROCS_B[$key]}"
            v=$((v - bv))
        fi
        ((v > 0)) || continue
        if [[ $kind == k ]]; then KTHREADS=$((KTHREADS + v)); fi
        lines+=("$v $comm")
    done
    TOP=""
    if ((${#lines[@]})); then
        TOP=$(printf '%s\n' "${lines[@]}" | sort -rn | head -n 5 |
            awk -v hz="$CLK_TCK" '$1 / hz >= 0.05 { printf "%s%s %.1fs", (n++ ? ", " : ""), $2, $1 / hz }')
    fi
}
# phase_cpu N: CPU_COLS = per-request CPU µs of cart-svc, Postgres, Redis, the load
# generator, kernel threads and everything else (the rest of the machine's busy time:
# other processes, and softirqs that ran on an idle CPU), and the machine's busy share,
# tab-separated, from CB/CA and PROCS_B/PROCS_A. DISTURBED = the share of the machine
# (%) that went to "everything else" or to the hypervisor (steal); TOP = who.
phase_cpu() {
    local n=$1 cols
    procs_delta
    cols=$(awk -v b="$CB" -v a="$CA" -v n="$n" -v hz="$CLK_TCK" -v kt="$KTHREADS" 'BEGIN {
        split(b, B, " "); split(a, A, " ")
        us = 1e6 / hz
        svc = (A[1] - B[1]) * us; pg = (A[2] - B[2]) * us; rd = (A[3] - B[3]) * us
        cl = (A[4] - B[4]) * 1000; kern = kt * us; busy = (A[5] - B[5]) * us
        oth = busy - svc - pg - rd - cl - kern; if (oth < 0) oth = 0
        tot = (A[6] - B[6]) * us; steal = (A[7] - B[7]) * us
        printf "%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f", svc / n, pg / n, rd / n, cl / n, kern / n, oth / n,
            tot ? 100 * busy / tot : 0, tot ? 100 * (oth + steal) / tot : 0
    }')
    CPU_COLS=${cols%$'\t'*}
    DISTURBED=${cols##*$'\t'}
}
pg_stats() { # -> "commits wal_records wal_bytes wal_write wal_sync wal_sync_time_ms"
    psql_q -F ' ' -c "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
        wal_records, wal_bytes, wal_write, wal_sync, wal_sync_time FROM pg_stat_wal"
}
wal_cols() { # BEFORE AFTER N -> commits/req, WAL flushes/req, ms per flush, WAL bytes/req
    awk -v b="$1" -v a="$2" -v n="$3" 'BEGIN {
        split(b, B, " "); split(a, A, " ")
        s = A[5] - B[5]
        printf "%.2f\t%.2f\t%s\t%.0f", (A[1] - B[1]) / n, s / n, s >= 10 ? sprintf("%.2f", (A[6] - B[6]) / s) : "–", (A[3] - B[3]) / n
    }'
}
metrics() { curl -s "$SVC/metrics" >"$1" || : >"$1"; }
# mdelta BEFORE AFTER NAME [SUBSTRING...]: change of the sum of the series NAME{...} whose
# line holds every SUBSTRING.
mdelta() {
    local b=$1 a=$2 name=$3
    shift 3
    awk -v name="$name" -v subs="$(printf '%s\034' "$@")" '
        BEGIN { n = split(subs, S, "\034") - 1 }
        FNR == 1 { f++ }
        index($0, name "{") == 1 || index($0, name " ") == 1 {
            for (i = 1; i <= n; i++) if (index($0, S[i]) == 0) next
            if (f == 1) tb += $NF; else ta += $NF
        }
        END { printf "%.0f\n", ta - tb }' "$b" "$a"
}
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }
kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" "$2" | head -n 1; }

# retry_disturbed ATTEMPT: succeed when a disturbed phase should run again: on its first
# attempt, while the run's QUIET_BUDGET lasts (a re-run spends DURATION of it).
retry_disturbed() {
    ((DISTURBED > DISTURBED_PCT && $1 == 1 && QUIET_WAITED < QUIET_BUDGET)) || return 1
    QUIET_WAITED=$((QUIET_WAITED + DURATION))
    say "  ${DISTURBED}% of the machine went to other work (${TOP:-short-lived processes}): running it again"
}

# wait_quiet: wait until other processes leave the machine alone (while the run's
# QUIET_BUDGET of waiting lasts). Sets BG_BUSY (%, over the last 2 s; when we run at a
# negative nice, without niced work, which gets out of our way).
QUIET_WAITED=0
wait_quiet() {
    local b1 t1 n1
    while :; do
        machine_ticks
        b1=$BUSY
        t1=$ALL
        n1=$NICED
        sleep 2
        machine_ticks
        if [[ -n $NICE_NOTE ]]; then BUSY=$((BUSY - (NICED - n1))); fi
        BG_BUSY=$(((BUSY - b1) * 100 / (ALL - t1 > 0 ? ALL - t1 : 1)))
        ((BG_BUSY > DISTURBED_PCT && QUIET_WAITED < QUIET_BUDGET)) || break
        say "  the machine is ${BG_BUSY}% busy with other work; waiting for it to quiet down"
        sleep 3
        QUIET_WAITED=$((QUIET_WAITED + 5))
    done
    if ((BG_BUSY > DISTURBED_PCT)); then say "  still ${BG_BUSY}% busy, no waiting left: measuring anyway"; fi
}

# ------------------------------------------------------------------ phases
# One row per phase, tab-separated, in $ROWS: kind label rps p50 p99 p999 bad, then
# the 7 CPU columns of phase_cpu, then the 4 of wal_cols (empty for Redis floors),
# then a flag (disturbed or not).
ROWS=$TMP/rows.tsv
DETAILS=$TMP/details.md
NOTES=$TMP/notes.md
: >"$ROWS"
: >"$DETAILS"
: >"$NOTES"

# note_disturbed LABEL: a report line when a phase stayed disturbed.
note_disturbed() {
    if ((DISTURBED > DISTURBED_PCT)); then
        say "  WARNING: ${DISTURBED}% of the machine went to other work during this phase (${TOP:-short-lived processes})"
        printf -- '- ⚠ %s: %s%% of the machine went to other work during the phase (top: %s).\n' \
            "$1" "$DISTURBED" "${TOP:-short-lived processes}" >>"$NOTES"
        FLAG="⚠"
    else
        FLAG=""
    fi
}

# warm_up MODE: 2 s of unmeasured load, so a freshly started cart-svc opens its
# connections and faults its memory in before a measured phase.
warm_up() {
    wrk -t"$THREADS" -c"$CONNS" -d2s -s "$BENCH_DIR/cart.lua" "$SVC" \
        -- "$CARTS_FILE" "$TOKEN_FILE" "$1" "$THREADS" >/dev/null 2>&1 || true
}
warm_up_read() { warm_up read; }
warm_up_write() {
    checkpoint
    warm_up write
}

# wrk_phase NAME LABEL MODE CARTS METHOD ROUTE [PREPARE]: one measured wrk run against
# cart-svc (run again once if other work disturbed it). PREPARE runs before each try.
wrk_phase() {
    local name=$1 label=$2 mode=$3 carts=$4 method=$5 route=$6 prepare=${7:-}
    local out=$OUT/wrk-$name.txt mb=$OUT/metrics-$name.before ma=$OUT/metrics-$name.after
    local pb pa attempt csb csa
    for attempt in 1 2; do
        wait_quiet
        if [[ -n $prepare ]]; then "$prepare"; fi
        say "phase $name: wrk -t$THREADS -c$CONNS -d${DURATION}s ($label)"
        metrics "$mb"
        pb=$(pg_stats)
        svc_switches
        csb=$T
        cpu_sample CB PROCS_B
        wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$BENCH_DIR/cart.lua" "$SVC" \
            -- "$carts" "$TOKEN_FILE" "$mode" "$THREADS" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed"; }
        cpu_sample CA PROCS_A
        svc_switches
        csa=$T
        sleep 1.2 # Postgres flushes its statistics at most once a second
        pa=$(pg_stats)
        metrics "$ma"
        grep -q '^BENCH ' "$out" || { cat "$out" >&2; die "wrk printed no summary"; }
        REQS=$(kv requests "$out")
        phase_cpu "$REQS"
        retry_disturbed "$attempt" || break
    done
    note_disturbed "$label"
    local dur rps p50 p99 p999 mean little sock all ok2 bad codes srv_mean
    local cnt=http_server_request_duration_seconds_count sum=http_server_request_duration_seconds_sum
    local m="http_request_method=\"$method\"" r="http_route=\"$route\""
    dur=$(kv duration_us "$out")
    rps=$(awk -v r="$REQS" -v d="$dur" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
    p50=$(ms "$(kv p50_us "$out")")
    p99=$(ms "$(kv p99_us "$out")")
    p999=$(ms "$(kv p999_us "$out")")
    mean=$(ms "$(kv mean_us "$out")")
    little=$(awk -v c="$CONNS" -v r="$REQS" -v d="$dur" 'BEGIN { printf "%.2f", 1000 * c * (d / 1e6) / r }')
    sock=$(($(kv connect_errors "$out") + $(kv read_errors "$out") + $(kv write_errors "$out") + $(kv timeouts "$out")))
    # Status codes as cart-svc counted them (wrk itself only counts those >= 400).
    all=$(mdelta "$mb" "$ma" $cnt "$m" "$r")
    ok2=$(mdelta "$mb" "$ma" $cnt "$m" "$r" 'http_response_status_code="2')
    bad=$(awk -v a="$all" -v o="$ok2" -v s="$(kv status_errors "$out")" 'BEGIN { printf "%d", (a - o > s ? a - o : s) }')
    codes=$(awk -v name="$cnt" -v m="$m" -v r="$r" '
        FNR == 1 { f++ }
        index($0, name "{") == 1 && index($0, m) && index($0, r) {
            match($0, /http_response_status_code="[0-9]+"/); c = substr($0, RSTART + 27, 3)
            if (f == 1) B[c] += $NF; else A[c] += $NF
        }
        END { s = ""; for (c in A) if (A[c] - B[c] > 0) s = s (s ? ", " : "") c ": " A[c] - B[c]; print s }' "$mb" "$ma")
    srv_mean=$(awk -v name="$sum" -v m="$m" -v r="$r" -v n="$all" '
        FNR == 1 { f++ }
        index($0, name "{") == 1 && index($0, m) && index($0, r) { if (f == 1) b += $NF; else a += $NF }
        END { printf "%.2f", (n > 0 ? 1000 * (a - b) / n : 0) }' "$mb" "$ma")
    local c="cart_cache_requests_total" hit miss err byp stored perr
    hit=$(mdelta "$mb" "$ma" $c 'op="get"' 'result="hit"')
    miss=$(mdelta "$mb" "$ma" $c 'op="get"' 'result="miss"')
    err=$(mdelta "$mb" "$ma" $c 'op="get"' 'result="error"')
    byp=$(mdelta "$mb" "$ma" $c 'op="get"' 'result="bypass"')
    stored=$(mdelta "$mb" "$ma" $c 'op="put"' 'result="stored"')
    perr=$(mdelta "$mb" "$ma" $c 'op="put"' 'result="error"')
    printf 'svc\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "$p50" "$p99" "$p999" "$bad" \
        "$CPU_COLS" "$(wal_cols "$pb" "$pa" "$REQS")" "$FLAG" >>"$ROWS"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s / %s | %s / %s |\n' "$label" "$REQS" \
        "${codes:-none}" "$sock" "$mean" "$little" "$srv_mean" \
        "$(awk -v a="$csa" -v b="$csb" -v n="$REQS" 'BEGIN { printf "%.1f", (a - b) / n }')" \
        "$hit" "$miss" "$err" "$byp" "$stored" "$perr" >>"$DETAILS"
    say "  $rps req/s, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, statuses: ${codes:-none}, socket errors $sock"
    say "  cache get hit/miss/error/bypass: $hit/$miss/$err/$byp; CPU µs/req svc,pg,redis,client,kthreads,other,busy%: $(echo "$CPU_COLS" | tr '\t' ',')"
}

# perf_profile NAME MODE: an unmeasured wrk run with perf sampling cart-svc meanwhile.
perf_profile() {
    local name=$1 mode=$2
    ((HAVE_PERF)) || return 0
    say "profile $name: perf record -e cpu-clock -g -p <cart-svc> for ${PERF_SECS}s under wrk ($mode)"
    perf record -q -e cpu-clock -g -p "$SVC_PID" -o "$OUT/perf-$name.data" -- sleep "$PERF_SECS" \
        >"$OUT/perf-$name.record.log" 2>&1 &
    PERF_PID=$!
    wrk -t"$THREADS" -c"$CONNS" -d"$((PERF_SECS + 1))s" -s "$BENCH_DIR/cart.lua" "$SVC" \
        -- "$CARTS_FILE" "$TOKEN_FILE" "$mode" "$THREADS" >"$OUT/wrk-perf-$name.txt" 2>&1 || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    if [[ -s $OUT/perf-$name.data ]]; then
        perf report -i "$OUT/perf-$name.data" --stdio 2>/dev/null | sed 's/ *$//' | head -60 \
            >"$OUT/perf-$name.txt" || true
        perf report -i "$OUT/perf-$name.data" --stdio --no-children -g none --percent-limit 0.5 \
            --sort dso,sym 2>/dev/null | sed 's/ *$//' | grep -v '^$' | grep -v '^# \.\.\.' | cut -c1-200 |
            head -80 >"$OUT/perf-$name.flat.txt" || true
        perf report -i "$OUT/perf-$name.data" --stdio --no-children -g none --sort dso 2>/dev/null |
            sed 's/ *$//' | grep -E '^ +[0-9.]+%' | head -8 >"$OUT/perf-$name.dso.txt" || true
    else
        say "  perf recorded nothing (see $OUT/perf-$name.record.log)"
    fi
}

# 1. Reads, cache hit: every seeded cart was read (and cached) while warming.
wrk_phase read-hit "GET /api/v1/cart, cache hit" read "$CARTS_FILE" GET /api/v1/cart
perf_profile read-hit read

# 2. Reads, cache miss: carts nobody read yet, each read once (wrk walks the list), so
#    every read is a real miss: HMGET answers nothing, cart-svc reads Postgres (2
#    statements) and caches the cart (EVALSHA of its compare-and-set script).
flush_cache() { rcli flushall sync >/dev/null; }
wrk_phase read-miss "GET /api/v1/cart, cache miss" once "$ONCE_FILE" GET /api/v1/cart flush_cache

# 3. Reads with Redis down: cart-svc restarted with REDIS_URL on a port nobody listens on.
#    After two failed calls (connection refused) its circuit breaker keeps Redis out of
#    the request path for 2 s, then lets one probe through: reads go to Postgres.
CLOSED_PORT=$(ds_free_port)
stop_svc
start_svc "redis://127.0.0.1:$CLOSED_PORT"
wrk_phase read-redis-down "GET /api/v1/cart, Redis down" read "$CARTS_FILE" GET /api/v1/cart warm_up_read
stop_svc
start_svc "redis://127.0.0.1:$REDIS_PORT"

# 4. Writes: 1 unit of one of 20 products added to a random seeded cart. With 2,000 carts
#    x 20 products a line gets a few units per run, far from the limit of 99; any 422
#    would show among the statuses and count as a failure.
wrk_phase write "POST /api/v1/cart/items" write "$CARTS_FILE" POST /api/v1/cart/items warm_up_write
read -r MAX_QTY MAX_LINES < <(psql_q -F ' ' -c "SELECT coalesce(max(quantity), 0), coalesce(max(c), 0)
    FROM cart.cart_items JOIN (SELECT cart_id, count(*) c FROM cart.cart_items GROUP BY cart_id) t USING (cart_id)")
perf_profile write write
stop_svc

# ------------------------------------------------------------------ floors
say "floors: redis-benchmark (-n $REDIS_N -c $CONNS)"
HIT_KEY="cart:$FIRST_ID"
# One cached cart of the real size for HMGET (cart-svc is stopped; any body will do).
rcli hset "$HIT_KEY" v 3 b "$(head -c "$CART_BYTES" /dev/zero | tr '\0' x)" >/dev/null

# redis_phase LABEL ARGS...: one redis-benchmark test; --csv gives rps, avg, p50, p99.
redis_phase() {
    local label=$1 out line rps p50 p99 attempt
    shift
    out=$OUT/redis-$(echo "$label" | tr -c 'A-Za-z0-9' '_' | cut -c1-40).csv
    for attempt in 1 2; do
        wait_quiet
        cpu_sample CB PROCS_B
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_N" -c "$CONNS" --csv "$@" >"$out" 2>&1 ||
            { cat "$out" >&2; die "redis-benchmark failed"; }
        cpu_sample CA PROCS_A
        phase_cpu "$REDIS_N"
        retry_disturbed "$attempt" || break
    done
    note_disturbed "$label"
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    line=$(grep -v '^"test"' "$out" | tail -n 1 | tr -d '"')
    rps=$(echo "$line" | awk -F, '{ printf "%.0f", $2 }')
    p50=$(echo "$line" | awk -F, '{ printf "%.2f", $5 }')
    p99=$(echo "$line" | awk -F, '{ printf "%.2f", $7 }')
    printf 'floor\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t\t%s\n' "$label" "$rps" "$p50" "$p99" "–" "0" \
        "$CPU_COLS" "$FLAG" >>"$ROWS"
    say "  $label: $rps req/s, p50 $p50 ms, p99 $p99 ms; CPU µs/req svc,pg,redis,client,kthreads,other,busy%: $(echo "$CPU_COLS" | tr '\t' ',')"
}
redis_phase "redis-benchmark GET" -t get -P 1
redis_phase "redis-benchmark SET" -t set -P 1
redis_phase "redis-benchmark HMGET cart:<id> v b (a cache hit's command)" -P 1 HMGET "$HIT_KEY" v b
redis_phase "redis-benchmark GET -P 16 (pipelined)" -t get -P 16
redis_phase "redis-benchmark SET -P 16 (pipelined)" -t set -P 16

say "floors: pgbench -M prepared -c $CONNS -j 2 -T $DURATION"
# pgbench_phase NAME LABEL SCRIPT CLIENTS: one pgbench run with per-statement latencies
# (-r) and a per-transaction log (--log) for the percentiles.
pgbench_phase() {
    local name=$1 label=$2 script=$3 clients=$4
    local out=$OUT/pgbench-$name.txt logdir=$TMP/pgblog-$name pb pa attempt tps n p50 p99 p999 failed
    for attempt in 1 2; do
        rm -rf "$logdir"
        mkdir -p "$logdir"
        checkpoint
        wait_quiet
        pb=$(pg_stats)
        cpu_sample CB PROCS_B
        (cd "$logdir" && "$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared \
            -c "$clients" -j 2 -T "$DURATION" -r --log --log-prefix=tx -D carts="$CARTS" \
            -f "$BENCH_DIR/$script" "$DB") >"$out" 2>&1 || { cat "$out" >&2; die "pgbench failed"; }
        cpu_sample CA PROCS_A
        sleep 1.2
        pa=$(pg_stats)
        n=$(cat "$logdir"/tx.* | wc -l)
        phase_cpu "$n"
        retry_disturbed "$attempt" || break
    done
    note_disturbed "$label"
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n 1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n 1)
    read -r p50 p99 p999 < <(cat "$logdir"/tx.* | awk '{ print $3 }' | sort -n | awk '
        { v[NR] = $1 }
        END {
            i50 = int(NR * 0.50); i99 = int(NR * 0.99); i999 = int(NR * 0.999)
            if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; if (i999 < 1) i999 = 1
            printf "%.2f %.2f %.2f\n", v[i50] / 1000, v[i99] / 1000, v[i999] / 1000
        }')
    printf 'floor\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$tps" "$p50" "$p99" "$p999" "${failed:-0}" \
        "$CPU_COLS" "$(wal_cols "$pb" "$pa" "$n")" "$FLAG" >>"$ROWS"
    say "  $label: $tps tps, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms; CPU µs/tx svc,pg,redis,client,kthreads,other,busy%: $(echo "$CPU_COLS" | tr '\t' ',')"
}
pgbench_phase upsert "pgbench: the line upsert alone (autocommit)" pg-upsert.sql "$CONNS"
pgbench_phase write-tx "pgbench: cart-svc's write transaction (its 8 statements)" pg-write-tx.sql "$CONNS"
pgbench_phase write-tx-16 "pgbench: the same, -c 16 (cart-svc's pool size)" pg-write-tx.sql 16
pgbench_phase read "pgbench: the 2 SELECTs of a cache miss" pg-read.sql "$CONNS"
BENCH_SECS=$((SECONDS - BENCH_T0))

# ------------------------------------------------------------------ report
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_G=$(free -g | awk '/^Mem:/ { print $2 }')
PG_VERSION=$("$PG_BIN/postgres" --version)
REDIS_VERSION=$(redis-server --version | sed 's/ sha=.*//')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git status --porcelain -- crates Cargo.toml Cargo.lock migrations 2>/dev/null) ]]; then
    DIRTY=" plus uncommitted changes under crates/, Cargo.* or migrations/"
fi
CMD="scripts/bench-cart.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
if [[ -n ${BENCH_QUIET_WAIT:-} ]]; then CMD="BENCH_QUIET_WAIT=$BENCH_QUIET_WAIT $CMD"; fi

REPORT=$OUT/report.md
{
    echo "<!-- bench-cart:begin: generated by scripts/bench-cart.sh; a re-run replaces everything down to bench-cart:end -->"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`$CMD\` (after \`cargo build --release -p cart-svc\`;"
    echo "${BENCH_SECS} s of setup and measuring, ${QUIET_WAITED} s of it waiting for or redoing phases"
    echo "disturbed by other work), at commit \`$COMMIT\`$DIRTY."
    echo
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), ${MEM_G} GiB RAM, Linux $(uname -r), data on $FS_TYPE."
    echo "- $PG_VERSION: $PG_SETTINGS (defaults: every commit waits for its WAL flush)."
    echo "- $REDIS_VERSION, no persistence."
    echo "- cart-svc with its defaults: 2 HTTP workers (one per CPU), 16 Postgres and 16 Redis"
    echo "  connections, RUST_LOG=warn. It shares the $(nproc) CPUs with Postgres, Redis and the load generator${NICE_NOTE:+,}"
    if [[ -n $NICE_NOTE ]]; then echo "  all of them $NICE_NOTE (niced work elsewhere on the machine yields to them)."; fi
    echo "- Data: $CARTS guest carts of 3 lines seeded through cart-svc (a ${CART_BYTES}-byte JSON body),"
    echo "  $ONCE_CARTS more written straight into Postgres for the cache-miss phase, $CARTS for pgbench; $DB_SIZE."
    echo
    echo "cart-svc is called directly (not through the gateway) with the internal headers,"
    echo "\`wrk -t$THREADS -c$CONNS -d${DURATION}s\` with \`scripts/bench/cart.lua\`: a random seeded cart per"
    echo "request, except for the cache misses (every cart read once). **wrk is a closed loop**: each"
    echo "of the $CONNS connections sends its next request when the previous answer arrives, so req/s is"
    echo "what the machine sustains with $CONNS requests in flight, and the latencies include the"
    echo "queueing at that concurrency; they are not the latencies of an open-loop arrival rate"
    echo "(no coordinated-omission correction). The floors run the same way (closed loop, $CONNS"
    echo "clients, except where said) on the same Postgres and Redis, right after."
    echo
    echo "| workload | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx / failed |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s%s%s | %s | %s | %s | %s | %s |\n", ($1 == "floor" ? "floor: " : "**cart-svc** "), $2,
        ($19 != "" ? " " $19 : ""), $3, $4, $5, $6, $7 }' "$ROWS"
    echo
    echo "Where the CPU goes, in µs per request (pgbench: per transaction), from \`/proc\` over each"
    echo "phase: user + system time of cart-svc, Postgres (all its processes), Redis, the load"
    echo "generator (wrk, redis-benchmark or pgbench) and kernel threads (journal, workers);"
    echo "\"other\" is the rest of the machine's busy time (other processes, softirqs on an idle CPU);"
    echo "busy is the share of the $(nproc) CPUs in use. The kernel's work for a process (system calls,"
    echo "and with this kernel's tick-based accounting most of the loopback network stack's softirqs)"
    echo "counts as that process's time. For Postgres: commits, WAL flushes (fdatasync) and WAL"
    echo "bytes per request, and the mean time of one flush (\`pg_stat_wal\`, \`track_wal_io_timing\`)."
    echo
    echo "| workload | cart-svc | Postgres | Redis | client | kernel threads | other | busy | commits | WAL flushes | ms / flush | WAL bytes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'function d(x) { return x == "" ? "–" : x }
    {
        printf "| %s | %s | %s | %s | %s | %s | %s | %s%% | %s | %s | %s | %s |\n", $2,
            ($1 == "floor" ? "–" : $8), $9, $10, $11, $12, $13, $14, d($15), d($16), d($17), d($18)
    }' "$ROWS"
    echo
    echo "What cart-svc counted itself (\`/metrics\`) in each phase: the statuses, wrk's socket"
    echo "errors, the mean latency seen by wrk, the mean a closed loop implies (connections ÷ rate),"
    echo "the mean inside cart-svc (from its middleware: the difference is time in socket queues"
    echo "and waiting for a worker thread), the context switches of its threads per request"
    echo "(\`/proc/<pid>/task/*/status\`), and its cache calls."
    echo
    echo "| phase | requests | statuses | socket errors | mean ms (wrk) | C ÷ rate ms | mean ms (in cart-svc) | context switches / req | cache get hit / miss / error / bypass | cache put stored / error |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---|---|"
    cat "$DETAILS"
    echo
    if [[ -s $NOTES ]]; then
        cat "$NOTES"
        echo
    fi
    if [[ -n $SQL_DRIFT ]]; then
        echo "- ⚠ cart-svc's SQL changed since scripts/bench/pg-*.sql were written (not found in store.rs:"
        echo "  $SQL_DRIFT): the pgbench floors may not match what cart-svc sends."
        echo
    fi
    echo "After the writes the biggest line held $MAX_QTY units (limit 99) and the biggest cart $MAX_LINES"
    echo "lines (limit 100). Seeding $((CARTS * 3)) writes with 8 keep-alive curl processes took ${SEED_SECS} s."
    echo
    echo "What cart-svc sends to Postgres (its statement log, \`log_statement = all\`, for one request;"
    echo "each statement is one round trip; the log does not show protocol-level messages such as a"
    echo "connection pool's pings):"
    echo
    echo "- one write (POST /api/v1/cart/items, no Idempotency-Key), $(grep -c . <<<"$WRITE_STATEMENTS") statements:"
    # shellcheck disable=SC2016 # backquotes for Markdown
    sed 's/^/  `/; s/$/`/' <<<"$WRITE_STATEMENTS"
    echo "- one cache-miss read (GET /api/v1/cart), $(grep -c . <<<"$MISS_STATEMENTS") statements:"
    # shellcheck disable=SC2016
    sed 's/^/  `/; s/$/`/' <<<"$MISS_STATEMENTS"
    echo
    echo "Mean latency of each statement of the write transaction in pgbench (\`-r\`, ms, -c $CONNS):"
    echo
    echo '```'
    sed -n '/statement latencies/,$p' "$OUT/pgbench-write-tx.txt" | sed '1d' | grep -v '\\set' |
        awk '{ ms = $1; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "%7s  %s\n", ms, substr($0, 1, 72) }'
    echo '```'
    if ((HAVE_PERF)) && [[ -s $OUT/perf-write.dso.txt ]]; then
        echo
        echo "cart-svc's own CPU by binary (\`perf record -e cpu-clock -g -p <cart-svc>\` for ${PERF_SECS} s under the"
        echo "same wrk load, \`perf report --no-children --sort dso\`; the full reports are in"
        echo "\`target/bench-cart/<run>/perf-*.txt\`), writes | cache-hit reads:"
        echo
        echo '```'
        paste -d'|' <(awk '{ printf "%-40s\n", $0 }' "$OUT/perf-write.dso.txt") "$OUT/perf-read-hit.dso.txt" 2>/dev/null ||
            cat "$OUT/perf-write.dso.txt"
        echo '```'
    fi
    echo
    echo "<!-- bench-cart:end -->"
} >"$REPORT"

printf '\n' >&2
cat "$REPORT"

# ------------------------------------------------------------------ docs/PERFORMANCE.md
# Replace the generated block of our section (keeping the hand-written text after it),
# or the whole section when it has no generated block, or add the section at the end.
write_doc() {
    local placeholder=$TMP/placeholder.md new=$TMP/PERFORMANCE.md
    {
        echo "### Where the time goes"
        echo
        echo "_Not written yet: read the figures above and write the analysis here by hand (re-runs keep it)._"
    } >"$placeholder"
    if [[ ! -e $DOC ]]; then
        {
            echo "# Performance"
            echo
            echo "Benchmarks of this repository, each with the command that reproduces it and the"
            echo "machine it ran on. Each benchmark script owns one section and rewrites only that."
        } >"$DOC"
    fi
    awk -v title="$SECTION_TITLE" -v report="$REPORT" -v placeholder="$placeholder" '
        function emit(f,   l) { while ((getline l < f) > 0) print l; close(f) }
        function flush_section(   i, skipping) {
            print title
            if (!has_block) { print ""; emit(report); print ""; emit(placeholder); print ""; done = 1; return }
            skipping = 0
            for (i = 1; i <= n; i++) {
                if (buf[i] ~ /^<!-- bench-cart:begin/) { emit(report); skipping = 1; continue }
                if (skipping && buf[i] ~ /^<!-- bench-cart:end/) { skipping = 0; continue }
                if (!skipping) print buf[i]
            }
            done = 1
        }
        BEGIN { state = "before"; done = 0 }
        state == "before" && $0 == title { state = "in"; n = 0; has_block = 0; next }
        state == "in" && /^## / { state = "after"; flush_section() }
        state == "in" { buf[++n] = $0; if ($0 ~ /^<!-- bench-cart:begin/) has_block = 1; next }
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
