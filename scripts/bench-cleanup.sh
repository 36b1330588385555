#!/usr/bin/env bash
# Benchmark of cleanup-worker: delete N expired carts while a steady shopper workload runs
# through the gateway; report the workload's latency without and with the worker, and
# the deletion rate. Writes its section of docs/PERFORMANCE.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-cleanup.sh [options]

  1. private Postgres (fsync on) and Redis on free ports, release binaries
     (cargo build --release --bins first, or --build)
  2. the platform without its worker; N expired guest carts (one line each) seeded with
     SQL, S guest sessions with a cart made through the gateway
  3. baseline: wrk (steady: each connection pauses THINK ms between requests) for D s
  4. with the worker: `cleanup-worker` in `once` mode deletes the N carts while the same
     workload runs for as long as the deletion is expected to take
  5. writes the figures into docs/PERFORMANCE.md (section "Cleanup worker")

Options:
  --carts N          expired carts to delete (default 1000000)
  --rate R           CLEANUP_MAX_ROWS_PER_SECOND (default 5000)
  --batch B          CLEANUP_BATCH_SIZE (default 500)
  --duration D       baseline seconds (default 60)
  --sessions S       shopper sessions (default 1000)
  --connections C    wrk connections (default 16)
  --think MS         pause per connection between requests (default 20)
  --build            cargo build --release --bins first
  --no-write         do not touch docs/PERFORMANCE.md
EOF
}

CARTS=1000000
RATE=5000
BATCH=500
DURATION=60
SESSIONS=1000
CONNS=16
THINK=20
BUILD=0
WRITE=1
while (($#)); do
    case $1 in
    --carts) CARTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --think) THINK=$2; shift 2 ;;
    --build) BUILD=1; shift ;;
    --no-write) WRITE=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
ARGS_NOTE="--carts $CARTS --rate $RATE --batch $BATCH --duration $DURATION --sessions $SESSIONS --connections $CONNS --think $THINK"

if [[ ! -t 0 ]]; then exec </dev/null; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DS_TAG="bench-cleanup"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"
say() { printf '[bench-cleanup] %s\n' "$*" >&2; }
die() {
    printf '[bench-cleanup] ERROR: %s\n' "$*" >&2
    exit 1
}
command -v wrk >/dev/null || die "wrk not found (apt-get install wrk)"
PSQL=$(ds_pg_tool psql) || die "psql not found (install postgresql)"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release
if ((BUILD)); then cargo build --release --bins; fi
for b in gateway auth-svc session-svc cart-svc cleanup-worker; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing: cargo build --release --bins (or --build)"
done

TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bench-cleanup.XXXXXX")
chmod 755 "$TMP"
PIDS=()
PG_DATA=""
REDIS_PORT=""
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n $PG_DATA ]]; then ds_pg_stop "$PG_DATA" || true; fi
    if [[ -n $REDIS_PORT ]]; then ds_redis_stop "$REDIS_PORT" "$TMP/redis.pid" nosave || true; fi
    if ((rc != 0)); then say "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------ datastores
PG_PORT=$(ds_free_port)
PG_DATA=$TMP/pg
ds_pg_start "$PG_DATA" "$PG_PORT" "$TMP/postgres.log" persistent || die "could not start Postgres"
DB=cleanup_bench
ds_pg_create_db "$PG_PORT" "$DB"
psql_q() { "$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$DB" -v ON_ERROR_STOP=1 -tA "$@"; }
REDIS_PORT=$(ds_free_port)
ds_redis_start "$TMP/redis" "$REDIS_PORT" "$TMP/redis.pid" "$TMP/redis.log" throwaway || die "could not start Redis"

# ------------------------------------------------------------------ platform (no worker)
INTERNAL_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
declare -A PORT
for s in gateway auth-svc session-svc cart-svc cleanup-worker; do PORT[$s]=$(ds_free_port); done
export INTERNAL_TOKEN RUST_LOG=warn LOG_FORMAT=json
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export GATEWAY_LISTEN=127.0.0.1:${PORT[gateway]} AUTH_LISTEN=127.0.0.1:${PORT[auth-svc]}
export SESSION_LISTEN=127.0.0.1:${PORT[session-svc]} CART_LISTEN=127.0.0.1:${PORT[cart-svc]}
export CLEANUP_LISTEN=127.0.0.1:${PORT[cleanup-worker]}
export AUTH_URL=http://$AUTH_LISTEN SESSION_URL=http://$SESSION_LISTEN CART_URL=http://$CART_LISTEN
wait_ready() {
    local url=$1 i
    for ((i = 0; i < 300; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    die "$url not ready (logs: $TMP)"
}
for s in auth-svc cart-svc session-svc gateway; do
    "$BIN/$s" >"$TMP/$s.log" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:${PORT[$s]}"
done
GW=http://$GATEWAY_LISTEN
say "platform up (gateway $GW), Postgres :$PG_PORT, Redis :$REDIS_PORT"

# ------------------------------------------------------------------ data
say "seeding $CARTS expired guest carts with one line each"
SEED_START=$SECONDS
psql_q <<SQL
INSERT INTO cart.carts (cart_id, version, created_at, updated_at)
SELECT gen_random_uuid(), 1, now() - interval '30 days', now() - interval '15 days' - make_interval(secs => g)
  FROM generate_series(1, $CARTS) g;
INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity)
SELECT gen_random_uuid(), cart_id, 'sku-1', 1 FROM cart.carts;
INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
SELECT cart_id, 'sku-1', 1 FROM cart.carts;
VACUUM ANALYZE cart.carts;
VACUUM ANALYZE cart.cart_items;
VACUUM ANALYZE cart.line_changes;
CHECKPOINT;
SQL
SEED_SECS=$((SECONDS - SEED_START))
DB_SIZE=$(psql_q -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
say "seeded in ${SEED_SECS}s ($DB_SIZE); making $SESSIONS shopper sessions through the gateway"
TOKENS=$TMP/tokens
: >"$TOKENS"
make_session() {
    local tok
    tok=$(curl -s -X POST "$GW/api/v1/sessions" | sed -n 's/.*"session_token":"\([^"]*\)".*/\1/p')
    [[ -n $tok ]] || return 1
    curl -s -o /dev/null -X POST "$GW/api/v1/cart/items" -H "X-Session-Token: $tok" \
        -H 'Content-Type: application/json' -d '{"product_id":"sku-1","quantity":1}'
    echo "$tok"
}
export -f make_session
export GW
seq "$SESSIONS" | xargs -P 8 -I{} bash -c make_session >>"$TOKENS"
(($(wc -l <"$TOKENS") == SESSIONS)) || die "only $(wc -l <"$TOKENS") of $SESSIONS sessions made"

run_wrk() { # NAME SECONDS
    wrk -t2 -c"$CONNS" -d"${2}s" --latency -s "$ROOT/scripts/bench/gateway-cart.lua" "$GW" \
        -- "$TOKENS" "$THINK" >"$TMP/wrk-$1.txt" 2>&1
    grep '^BENCH' "$TMP/wrk-$1.txt" || die "wrk printed no result: $(cat "$TMP/wrk-$1.txt")"
}
field() { sed -n "s/.* $2=\([0-9]*\).*/\1/p" <<<"$1"; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

# ------------------------------------------------------------------ phases
say "warm-up (10 s)"
run_wrk warmup 10 >/dev/null
say "baseline: the workload alone for ${DURATION}s"
BASE=$(run_wrk baseline "$DURATION")

EXPECTED=$(((CARTS + RATE - 1) / RATE))
WITH_SECS=$((EXPECTED > DURATION ? EXPECTED : DURATION))
say "with the worker: deleting $CARTS carts at up to $RATE rows/s (~${EXPECTED}s), workload for ${WITH_SECS}s"
CLEANUP_MODE=once CLEANUP_MAX_ROWS_PER_SECOND=$RATE CLEANUP_BATCH_SIZE=$BATCH RUST_LOG=info \
    "$BIN/cleanup-worker" >"$TMP/cleanup-worker.log" 2>&1 &
WORKER_PID=$!
PIDS+=("$WORKER_PID")
WORKER_START=$(date +%s.%N)
WITH=$(run_wrk with-worker "$WITH_SECS")
LEFT_AT_WRK_END=$(psql_q -c "SELECT count(*) FROM cart.carts WHERE user_id IS NULL AND updated_at < now() - interval '14 days'")
WORKER_RC=0
wait "$WORKER_PID" || WORKER_RC=$?
WORKER_END=$(date +%s.%N)
((WORKER_RC == 0)) || die "cleanup-worker exited $WORKER_RC (log: $TMP/cleanup-worker.log)"
LEFT=$(psql_q -c "SELECT count(*) FROM cart.carts WHERE updated_at < now() - interval '14 days'")
((LEFT == 0)) || die "$LEFT expired carts left after the pass"
ITEMS_LEFT=$(psql_q -c "SELECT count(*) FROM cart.cart_items i WHERE NOT EXISTS (SELECT 1 FROM cart.carts c WHERE c.cart_id = i.cart_id)")
PASS_LINE=$(grep '"cleanup pass finished"' "$TMP/cleanup-worker.log" | tail -n 1)
TOOK_MS=$(sed -n 's/.*"took_ms":\([0-9]*\).*/\1/p' <<<"$PASS_LINE")
WALL=$(awk -v a="$WORKER_START" -v b="$WORKER_END" 'BEGIN { printf "%.1f", b - a }')
DEL_RATE=$(awk -v n="$CARTS" -v ms="$TOOK_MS" 'BEGIN { printf "%.0f", n / (ms / 1000) }')

row() { # LABEL BENCH-LINE
    local l=$2 secs
    secs=$(awk -v us="$(field "$l" duration_us)" 'BEGIN { print us / 1e6 }')
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$1" "$(field "$l" requests)" \
        "$(awk -v n="$(field "$l" requests)" -v s="$secs" 'BEGIN { print n / s }')" \
        "$(ms "$(field "$l" p50)")" "$(ms "$(field "$l" p90)")" "$(ms "$(field "$l" p99)")" \
        "$(ms "$(field "$l" p999)")" "$(field "$l" errors)"
}
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
PGV=$("$PSQL" --version | head -n 1)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SECTION=$(
    cat <<EOF
<!-- bench-cleanup:begin: generated by scripts/bench-cleanup.sh; a re-run replaces everything down to bench-cleanup:end -->

Measured $(date -u '+%Y-%m-%d %H:%M') UTC with \`scripts/bench-cleanup.sh $ARGS_NOTE\`
(after \`cargo build --release --bins\`), at commit \`$COMMIT\`.

- Machine: $CPUS CPUs, $MEM RAM, shared with other work; $PGV (fsync on, defaults), Redis
  without persistence; the five release binaries with their defaults, RUST_LOG=warn.
- Data: $CARTS expired guest carts (last change 15+ days ago), each with one line and one
  line change, written with SQL ($DB_SIZE, ${SEED_SECS}s); $SESSIONS shopper sessions with
  a cart, made through the gateway.
- Workload: \`wrk -t2 -c$CONNS --latency\` with \`scripts/bench/gateway-cart.lua\` through the
  gateway: 4 in 5 requests \`GET /api/v1/cart\`, 1 in 5 \`POST /api/v1/cart/items\`, on a
  random session; each connection pauses ${THINK} ms after an answer, so the offered load is
  steady (at most ~$((CONNS * 1000 / THINK)) req/s) rather than all the machine can take.
- Worker: \`CLEANUP_MODE=once CLEANUP_MAX_ROWS_PER_SECOND=$RATE CLEANUP_BATCH_SIZE=$BATCH\`,
  started with the second workload run.

| workload through the gateway | requests | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
$(row "alone (${DURATION} s)" "$BASE")
$(row "while the worker deletes (${WITH_SECS} s)" "$WITH")

Deletion: $CARTS carts (with $CARTS lines and line changes, by cascade) in $(awk -v ms="$TOOK_MS" 'BEGIN { printf "%.1f", ms / 1000 }') s of pass
(${WALL} s wall, start-up included): **$DEL_RATE carts/s** against a pace of $RATE/s;
$LEFT_AT_WRK_END expired carts were still left when the workload run ended; 0 left after
the pass, $ITEMS_LEFT orphaned lines.

<!-- bench-cleanup:end -->
EOF
)
printf '%s\n' "$SECTION"
if ((WRITE)); then
    DOC=$ROOT/docs/PERFORMANCE.md
    python3 - "$DOC" "$SECTION" <<'PY'
import sys, re
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
begin = "<!-- bench-cleanup:begin"
if begin in text:
    text = re.sub(r"<!-- bench-cleanup:begin.*?<!-- bench-cleanup:end -->", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n## Cleanup worker (scripts/bench-cleanup.sh)\n\n" + section + "\n"
open(path, "w").write(text)
PY
    say "docs/PERFORMANCE.md updated"
fi
