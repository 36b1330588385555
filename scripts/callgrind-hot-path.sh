#!/usr/bin/env bash
# Instructions per request on the hot path, counted by valgrind's callgrind: repeatable
# on a shared, busy machine where wall-clock and CPU-time figures are not.
#
#   scripts/callgrind-hot-path.sh LABEL [N_GET] [N_POST]
#
# Starts auth-svc natively and gateway, session-svc and cart-svc under callgrind (release
# binaries from target/release: cargo build --release -p gateway -p session-svc -p cart-svc
# -p auth-svc), on an existing Postgres and Redis; seeds a guest and a user, each with a
# 3-line cart, through the gateway; then for each of GET /api/v1/cart and POST
# /api/v1/cart/items, as guest (X-Session-Token) and as user (Bearer): 50 requests of
# warm-up, counters zeroed, N sequential keep-alive requests (scripts/callgrind/load.py),
# counters dumped. Prints instructions per request of each service under callgrind;
# dumps (for callgrind_annotate) and logs go to target/callgrind/LABEL/.
#
# Env: DATABASE_URL (default the local postgres database; a database perf_hot is created
# in it), REDIS_URL, LOG (RUST_LOG, default info: the default log level), VG (the
# services under callgrind), BIN (directory of the binaries). Gateway ports 18180-18183.
# The rate limiter is off (as in scripts/bench-gateway.sh).
set -euo pipefail
LABEL=$1; NGET=${2:-2000}; NPOST=${3:-240}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
P=$ROOT/scripts/callgrind; BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
PG=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/callgrind/$LABEL; rm -rf "$OUT"; mkdir -p "$OUT"
LOGLEVEL=${LOG:-info}
VG=${VG:-"gateway session-svc cart-svc"}
declare -A PORT=([gateway]=18180 [auth-svc]=18181 [session-svc]=18182 [cart-svc]=18183)
psql -q "$PG" -tAc "select 1 from pg_database where datname='perf_hot'" | grep -q 1 ||
  psql -q "$PG" -c "create database perf_hot"
DB=${PG%/*}/perf_hot
mkdir -p "$OUT/keys"
declare -A PID=()
cleanup() { for n in "${!PID[@]}"; do kill "${PID[$n]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
spawn() {
  local name=$1; local pre=()
  if [[ " $VG " == *" $name "* ]]; then
    pre=(valgrind --tool=callgrind --dump-instr=no --separate-threads=no --callgrind-out-file="$OUT/cg.$name.%p")
  fi
  env -i PATH="$PATH" HOME="$HOME" \
    DATABASE_URL="$DB" REDIS_URL="$REDIS" \
    REDIS_KEY_PREFIX="perfhot:$LABEL:" INTERNAL_TOKEN=perf-internal-token-0123456789abcdef \
    GATEWAY_LISTEN=127.0.0.1:${PORT[gateway]} AUTH_LISTEN=127.0.0.1:${PORT[auth-svc]} \
    SESSION_LISTEN=127.0.0.1:${PORT[session-svc]} CART_LISTEN=127.0.0.1:${PORT[cart-svc]} \
    AUTH_URL=http://127.0.0.1:${PORT[auth-svc]} SESSION_URL=http://127.0.0.1:${PORT[session-svc]} \
    CART_URL=http://127.0.0.1:${PORT[cart-svc]} AUTH_SIGNING_KEYS_DIR="$OUT/keys" \
    RATE_LIMIT_ENABLED=false RUST_LOG=$LOGLEVEL REDIS_TIMEOUT_MS=5000 CART_DB_DEADLINE_MS=10000 \
    DATABASE_ACQUIRE_TIMEOUT_MS=10000 UPSTREAM_TIMEOUT_MS=30000 UPSTREAM_READ_TIMEOUT_MS=30000 \
    UPSTREAM_ADMISSION_WAIT_MS=5000 \
    "${pre[@]}" "$BIN/$name" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!
}
ready() { local n; for n in "$@"; do for i in $(seq 600); do
  [[ $(curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:${PORT[$n]}/readyz) == 200 ]] && continue 2; sleep 0.2; done
  echo "$n not ready" >&2; tail "$OUT/$n.log" >&2; exit 1; done; }
spawn auth-svc; spawn cart-svc; ready auth-svc cart-svc
spawn session-svc; spawn gateway; ready session-svc gateway
python3 $P/seed.py ${PORT[gateway]} $OUT/cred.json >&2
poke() { for n in $VG; do curl -s -o /dev/null http://127.0.0.1:${PORT[$n]}/livez; done; }
ctl() { # ctl -z|-d : all callgrind'd services
  local n pids=()
  for n in $VG; do callgrind_control "$@" "${PID[$n]}" >/dev/null 2>&1 & pids+=($!); done
  sleep 0.3; poke; poke; wait "${pids[@]}"
}
total() { # newest dump of a service: its Ir
  local f; f=$(ls -t $OUT/cg.$1.*.[0-9]* 2>/dev/null | head -1)
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}
printf '%-12s %6s' scenario n >&2; for s in $VG; do printf ' %14s' "$s" >&2; done; echo >&2
for sc in guest-get user-get guest-post user-post; do
  n=$NGET; [[ $sc == *post ]] && n=$NPOST
  python3 $P/load.py ${PORT[gateway]} $sc 50 $OUT/cred.json >/dev/null   # warm-up
  ctl -z
  st=$(python3 $P/load.py ${PORT[gateway]} $sc $n $OUT/cred.json)
  ctl -d
  line=$(printf '%-12s %6s' $sc $n)
  for s in $VG; do line+=$(printf ' %14s' $(( $(total $s) / n ))); done
  echo "$line   $st" | tee -a "$OUT/summary.txt"
done
