#!/usr/bin/env bash
# Benchmark the gateway's proxy path against cart-svc called directly and against nginx
# proxying to the same cart-svc: the same cart read, open loop at fixed rates, latency
# corrected for coordinated omission (oha), with the CPU each proxy spends per request.
# Writes the figures into docs/PERFORMANCE.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-gateway.sh [--quick] [options]

In one run, on this machine, loopback only:
  1. cargo build --release -p gateway -p auth-svc -p session-svc -p cart-svc
  2. a throwaway Postgres and Redis on free ports (scripts/lib/datastores.sh)
  3. auth-svc, cart-svc, session-svc and the gateway (release, RUST_LOG=warn, defaults
     otherwise except RATE_LIMIT_ENABLED=false: the per-client limiter would answer 429
     to one client going above 20 req/s); one guest session through the gateway, its
     cart seeded with 3 lines and read once (the cart cache is warm)
  4. nginx (Debian package nginx), unprivileged, in the foreground, with a generated
     config in the temp dir: 2 workers, an upstream block on cart-svc with keepalive 64,
     proxy_http_version 1.1, Connection "", and proxy_set_header of the internal headers
     (x-internal-token, x-identity-kind: guest, x-identity-cart-id) as the gateway sends
     them
  5. for each target and rate: oha, open loop (-q RATE --latency-correction, keep-alive,
     C connections) for D seconds of GET /api/v1/cart on that cart:
       cart-svc   direct, with the internal headers
       gateway    X-Session-Token of the seeded session (the gateway asks session-svc,
                  then forwards to cart-svc)
       nginx      no credential: nginx adds the internal headers
     CPU per request of each process from /proc/<pid>/stat (utime + stime, all threads;
     nginx = master + workers)
  6. a Markdown report, printed and written to docs/PERFORMANCE.md, section
     "## Gateway vs nginx (scripts/bench-gateway.sh)" (a re-run replaces its generated
     block and keeps the hand-written analysis and every other section)

Options:
  --quick            rates 500,1000, 5 s each; does not touch docs/PERFORMANCE.md unless
                     --doc is given (for testing the script)
  --rates LIST       comma-separated request rates (default 1000,2000,4000)
  --duration SECS    seconds per target and rate (default 10; 5 with --quick)
  --connections N    oha connections (default 64)
  --doc / --no-doc   write / do not write docs/PERFORMANCE.md (default: write, unless --quick)
  --no-build         use the existing target/release binaries
  --keep             keep the temp dir (datastores, logs, nginx config)
  -h, --help         this text

Raw outputs (oha JSON, the report) go to target/bench-gateway/<UTC time>/
(target/bench-gateway/latest). Needs cargo, postgresql, redis-server, curl, python3,
nginx (apt-get install nginx when missing and run as root) and oha (cargo install oha
--locked when missing: a few minutes).
EOF
}

# ------------------------------------------------------------------ options
QUICK=0
RATES=""
DURATION=""
CONNS=64
WRITE_DOC=""
BUILD=1
KEEP=0
ARGS_GIVEN=("$@")
while (($# > 0)); do
    case $1 in
        --quick) QUICK=1 ;;
        --rates) RATES=${2:?--rates needs a value}; shift ;;
        --duration) DURATION=${2:?--duration needs a value}; shift ;;
        --connections) CONNS=${2:?--connections needs a value}; shift ;;
        --doc) WRITE_DOC=1 ;;
        --no-doc) WRITE_DOC=0 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'bench-gateway: unknown argument %s (see --help)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $RATES ]]; then RATES=$( ((QUICK)) && echo 500,1000 || echo 1000,2000,4000); fi
if [[ -z $DURATION ]]; then DURATION=$((QUICK ? 5 : 10)); fi
if [[ -z $WRITE_DOC ]]; then WRITE_DOC=$((QUICK ? 0 : 1)); fi
for v in DURATION CONNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { printf 'bench-gateway: %s must be a positive integer\n' "$v" >&2; exit 2; }
done
[[ $RATES =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { printf 'bench-gateway: --rates must be like 1000,2000\n' >&2; exit 2; }
IFS=, read -ra RATE_LIST <<<"$RATES"
TARGETS=(cart-svc gateway nginx)
P99_SLO_MS=150

exec </dev/null

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DOC=$ROOT/docs/PERFORMANCE.md
SECTION_TITLE="## Gateway vs nginx (scripts/bench-gateway.sh)"

DS_TAG="bench"
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"
# shellcheck source=scripts/lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

say() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ clean-up
TMP=""
PG_DATA=""
REDIS_PORT=""
NGINX_PID=""
declare -A PIDS=()
START=$SECONDS


# shellcheck disable=SC2317 # invoked from traps
on_exit() {
    local rc=$?
    trap '' INT TERM
    # nginx: SIGQUIT to the master = graceful stop of master and workers (NGINX_PID may be
    # runuser, which does not pass signals on)
    if [[ -n ${NGINX_MASTER:-} ]]; then stop_pid "nginx master" "$NGINX_MASTER" QUIT || true; fi
    if [[ -n $NGINX_PID ]]; then stop_pid nginx "$NGINX_PID" || true; fi
    local name
    for name in "${!PIDS[@]}"; do stop_pid "$name" "${PIDS[$name]}" || true; done
    if [[ -n $PG_DATA ]]; then ds_pg_stop "$PG_DATA" || true; fi
    if [[ -n $REDIS_PORT ]]; then ds_redis_stop "$REDIS_PORT" "$TMP/redis.pid" nosave || true; fi
    if [[ -n $TMP ]]; then
        if [[ -n ${OUT:-} && -d $OUT ]]; then cp "$TMP"/*.log "$TMP"/nginx/*.log "$TMP"/nginx/nginx.conf "$OUT"/ 2>/dev/null || true; fi
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
command -v python3 >/dev/null 2>&1 || die "python3 not found"
ds_ensure_packages postgres redis curl
NGINX=$(command -v nginx 2>/dev/null || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
if [[ -z $NGINX ]]; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing nginx (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null 2>&1 ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } ||
            die "apt-get install nginx failed"
        NGINX=/usr/sbin/nginx
    else
        die "nginx not found: install it (apt-get install nginx)"
    fi
fi
OHA=$(command -v oha 2>/dev/null || true)
[[ -z $OHA && -x $HOME/.cargo/bin/oha ]] && OHA=$HOME/.cargo/bin/oha
if [[ -z $OHA ]]; then
    say "installing oha (cargo install oha --locked; a few minutes)"
    cargo install oha --locked >&2 || die "cargo install oha failed"
    OHA=$HOME/.cargo/bin/oha
fi
OHA_HELP=$("$OHA" --help 2>&1)
if [[ $OHA_HELP == *--output-format* ]]; then OHA_JSON=(--output-format json); else OHA_JSON=(-j); fi
[[ $OHA_HELP == *--latency-correction* ]] || die "$OHA lacks --latency-correction (update it: cargo install oha --locked)"
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------ build
BINS=(auth-svc cart-svc session-svc gateway)
if ((BUILD)); then
    say "cargo build --release (gateway, auth-svc, session-svc, cart-svc)"
    SQLX_OFFLINE=true cargo build --release -p gateway -p auth-svc -p session-svc -p cart-svc >&2 ||
        die "release build failed"
fi
for b in "${BINS[@]}"; do
    [[ -x $ROOT/target/release/$b ]] || die "target/release/$b missing (run without --no-build)"
done

NICE_NOTE=""
if renice -n -10 -p $$ >/dev/null 2>&1; then NICE_NOTE="at nice -10"; fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-gateway/$STAMP
mkdir -p "$OUT"
ln -sfn "$STAMP" "$ROOT/target/bench-gateway/latest"
say "raw outputs: $OUT"

# ------------------------------------------------------------------ datastores
TMP=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/bench-gateway.XXXXXX")
chmod 755 "$TMP"
PG_PORT=$(ds_free_port)
PG_DATA=$TMP/pg
ds_pg_start "$PG_DATA" "$PG_PORT" "$TMP/postgres.log" throwaway || die "could not start Postgres"
DB=gateway_bench
ds_pg_create_db "$PG_PORT" "$DB"
REDIS_PORT=$(ds_free_port)
ds_redis_start "$TMP/redis" "$REDIS_PORT" "$TMP/redis.pid" "$TMP/redis.log" throwaway ||
    die "could not start Redis"

# ------------------------------------------------------------------ services
declare -A PORT=()
for n in "${BINS[@]}" nginx; do
    while :; do
        p=$(ds_free_port)
        if [[ " ${PORT[*]:-} " != *" $p "* ]]; then break; fi
    done
    PORT[$n]=$p
done
url() { printf 'http://127.0.0.1:%s' "${PORT[$1]}"; }
INTERNAL_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$TMP/auth-keys"

spawn() {
    local name=$1
    env -i PATH="$PATH" HOME="$HOME" \
        DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        INTERNAL_TOKEN="$INTERNAL_TOKEN" \
        GATEWAY_LISTEN="127.0.0.1:${PORT[gateway]}" \
        AUTH_LISTEN="127.0.0.1:${PORT[auth-svc]}" \
        SESSION_LISTEN="127.0.0.1:${PORT[session-svc]}" \
        CART_LISTEN="127.0.0.1:${PORT[cart-svc]}" \
        AUTH_URL="$(url auth-svc)" SESSION_URL="$(url session-svc)" CART_URL="$(url cart-svc)" \
        AUTH_SIGNING_KEYS_DIR="$TMP/auth-keys" \
        RATE_LIMIT_ENABLED=false \
        RUST_LOG=warn \
        "$ROOT/target/release/$name" >"$TMP/$name.log" 2>&1 &
    PIDS[$name]=$!
}
wait_ready() {
    local name deadline=$((SECONDS + 60))
    for name in "$@"; do
        until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$(url "$name")/readyz") == 200 ]]; do
            kill -0 "${PIDS[$name]}" 2>/dev/null || { ds_tail_log "$TMP/$name.log"; die "$name exited at start"; }
            ((SECONDS < deadline)) || { ds_tail_log "$TMP/$name.log"; die "$name not ready within 60 s"; }
            sleep 0.2
        done
    done
}
say "starting the services"
spawn auth-svc
spawn cart-svc
wait_ready auth-svc cart-svc
spawn session-svc
spawn gateway
wait_ready session-svc gateway

# ------------------------------------------------------------------ seed
GW=$(url gateway)
SESSION_JSON=$(curl -sf -X POST "$GW/api/v1/sessions") || die "POST /api/v1/sessions failed"
read -r SESSION_TOKEN CART_ID < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["session_token"], d["cart_id"])' <<<"$SESSION_JSON")
for i in 1 2 3; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GW/api/v1/cart/items" -H "X-Session-Token: $SESSION_TOKEN" \
        -H 'Content-Type: application/json' -d "{\"product_id\":\"sku-$i\",\"quantity\":$i}")
    [[ $code == 200 ]] || die "seeding: POST /api/v1/cart/items answered $code"
done
CART_BYTES=$(curl -sf "$GW/api/v1/cart" -H "X-Session-Token: $SESSION_TOKEN" | wc -c) || die "GET /api/v1/cart failed"
say "seeded cart $CART_ID (3 lines, $CART_BYTES bytes of JSON)"

# ------------------------------------------------------------------ nginx
NGX=$TMP/nginx
mkdir -p "$NGX/tmp"
NGINX_WORKERS=$(nproc)
cat >"$NGX/nginx.conf" <<EOF
# Generated by scripts/bench-gateway.sh
worker_processes $NGINX_WORKERS;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    upstream cart_svc {
        server 127.0.0.1:${PORT[cart-svc]};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://cart_svc;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-internal-token "$INTERNAL_TOKEN";
            proxy_set_header x-identity-kind "guest";
            proxy_set_header x-identity-cart-id "$CART_ID";
        }
    }
}
EOF
NGINX_RUN=("$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log")
if [[ $EUID -eq 0 ]]; then
    # unprivileged: the whole of nginx runs as nobody
    chown -R nobody "$NGX"
    chmod 755 "$TMP"
    NGINX_RUN=("$DS_RUNUSER" -u nobody -- "${NGINX_RUN[@]}")
fi
"${NGINX_RUN[@]}" -t >"$NGX/configtest.log" 2>&1 || { cat "$NGX/configtest.log" >&2; die "nginx -t failed"; }
"${NGINX_RUN[@]}" >"$NGX/stdout.log" 2>&1 &
NGINX_PID=$!
for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$(url nginx)/api/v1/cart") == 200 ]] && break
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$NGX/error.log" >&2; die "nginx exited at start"; }
    sleep 0.1
done
((i < 100)) || { cat "$NGX/error.log" >&2; die "nginx did not answer 200 on /api/v1/cart"; }
NGINX_MASTER=$(cat "$NGX/nginx.pid")
[[ $NGINX_MASTER =~ ^[0-9]+$ ]] || die "no nginx pid in $NGX/nginx.pid"
say "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') on $(url nginx) (master $NGINX_MASTER, $NGINX_WORKERS workers)"

# ------------------------------------------------------------------ measuring
nginx_pids() { # master and its workers
    echo "$NGINX_MASTER"
    pgrep -P "$NGINX_MASTER" 2>/dev/null || true
}
machine_busy() { # busy and total ticks of all CPUs
    local _c u n s i w irq sirq st rest
    read -r _c u n s i w irq sirq st rest </proc/stat
    echo "$((u + n + s + irq + sirq)) $((u + n + s + i + w + irq + sirq + st))"
}

RESULTS=$OUT/results.tsv
printf 'target\trate\trps\tok\treqs\tp50\tp99\tp999\tmax\tstatuses\tgw_us\tsess_us\tcart_us\tnginx_us\tbusy\tuptime\n' >"$RESULTS"

target_request() { # TARGET: T_URL and T_HDR = the request oha sends to it
    T_HDR=()
    case $1 in
        cart-svc)
            T_URL=$(url cart-svc)/api/v1/cart
            T_HDR=(-H "x-internal-token: $INTERNAL_TOKEN" -H 'x-identity-kind: guest' -H "x-identity-cart-id: $CART_ID") ;;
        gateway)
            T_URL=$GW/api/v1/cart
            T_HDR=(-H "X-Session-Token: $SESSION_TOKEN") ;;
        nginx)
            T_URL=$(url nginx)/api/v1/cart ;;
    esac
}

run_phase() { # TARGET RATE
    local target=$1 rate=$2 url_ up json gb sb cb nb mb ga sa ca na ma
    target_request "$target"
    url_=$T_URL
    local -a hdr=(${T_HDR[@]+"${T_HDR[@]}"})
    up=$(uptime | sed 's/.*load average: //')
    json=$OUT/oha-$target-$rate.json
    gb=$(ticks_of "${PIDS[gateway]}"); sb=$(ticks_of "${PIDS[session-svc]}")
    cb=$(ticks_of "${PIDS[cart-svc]}"); nb=$(ticks_of $(nginx_pids)); mb=$(machine_busy)
    "$OHA" "$url_" ${hdr[@]+"${hdr[@]}"} -q "$rate" --latency-correction -z "${DURATION}s" -c "$CONNS" \
        --no-tui "${OHA_JSON[@]}" >"$json" 2>"$OUT/oha-$target-$rate.err" || die "oha failed ($target, $rate/s)"
    ga=$(ticks_of "${PIDS[gateway]}"); sa=$(ticks_of "${PIDS[session-svc]}")
    ca=$(ticks_of "${PIDS[cart-svc]}"); na=$(ticks_of $(nginx_pids)); ma=$(machine_busy)
    python3 - "$json" "$target" "$rate" "$CLK_TCK" "$up" \
        "$gb $ga" "$sb $sa" "$cb $ca" "$nb $na" "$mb $ma" >>"$RESULTS" <<'PY'
import json, sys
path, target, rate, hz, up = sys.argv[1:6]
d = json.load(open(path))
s = d["summary"]
lat = d.get("latencyPercentiles") or d.get("latency_percentiles") or {}
codes = d.get("statusCodeDistribution") or {}
errs = d.get("errorDistribution") or {}
ok = int(codes.get("200", 0))
# Requests still in flight when the phase ends are cut off by oha, not failed: left out.
cut = {k: v for k, v in errs.items() if "deadline" in k}
errs = {k: v for k, v in errs.items() if k not in cut}
reqs = sum(int(v) for v in codes.values()) + sum(int(v) for v in errs.values())
def ms(k):
    v = lat.get(k)
    return "" if v is None else "%.2f" % (float(v) * 1000)
def per_req(pair):
    a, b = (int(x) for x in pair.split())
    return "%.0f" % ((b - a) / float(hz) * 1e6 / reqs) if reqs else ""
b0, t0, b1, t1 = (int(x) for x in sys.argv[10].split())
busy = "%.0f%%" % (100.0 * (b1 - b0) / (t1 - t0)) if t1 > t0 else ""
statuses = ", ".join("%s: %s" % kv for kv in sorted(codes.items()))
if cut:
    statuses += "; cut off at the end: %d" % sum(int(v) for v in cut.values())
if errs:
    statuses += ("; " if statuses else "") + ", ".join("%s: %s" % (k[:60], v) for k, v in errs.items())
print("\t".join([target, rate, "%.0f" % float(s.get("requestsPerSec", 0)), str(ok), str(reqs),
                 ms("p50"), ms("p99"), ms("p99.9"), "%.2f" % (float(s.get("slowest", 0)) * 1000), statuses,
                 per_req(sys.argv[6]), per_req(sys.argv[7]), per_req(sys.argv[8]), per_req(sys.argv[9]),
                 busy, up]))
PY
    say "$(tail -n 1 "$RESULTS" | awk -F'\t' '{ printf "%-8s %5s/s: %s req/s, p50 %s ms, p99 %s ms, p99.9 %s ms", $1, $2, $3, $6, $7, $8 }')"
}

UPTIME_START=$(uptime)
BENCH_T0=$SECONDS
for target in "${TARGETS[@]}"; do
    # 2 s of warm-up at the lowest rate: connections open, caches warm.
    target_request "$target"
    "$OHA" "$T_URL" ${T_HDR[@]+"${T_HDR[@]}"} -q "${RATE_LIST[0]}" -z 2s -c "$CONNS" --no-tui "${OHA_JSON[@]}" >/dev/null 2>&1 || true
    for rate in "${RATE_LIST[@]}"; do
        run_phase "$target" "$rate"
    done
done
UPTIME_END=$(uptime)

# ------------------------------------------------------------------ report
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git status --porcelain -- crates migrations 2>/dev/null) ]]; then DIRTY=" (with uncommitted changes under crates/ or migrations/)"; fi
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
OHA_VERSION=$("$OHA" --version 2>/dev/null | head -n 1)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/.*: //')
REPORT=$OUT/report.md
CMD="scripts/bench-gateway.sh${ARGS_GIVEN[*]:+ ${ARGS_GIVEN[*]}}"
{
    echo "<!-- bench-gateway:begin: generated by scripts/bench-gateway.sh; a re-run replaces everything down to bench-gateway:end -->"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M') UTC with \`$CMD\`; $((SECONDS - BENCH_T0)) s of"
    echo "measuring, at commit \`$COMMIT\`$DIRTY."
    echo
    echo "- Machine: $(nproc) CPUs ($CPU_MODEL), $MEM RAM, Linux $(uname -r)."
    echo "- Load (\`uptime\`) at the start: \`$UPTIME_START\`; at the end: \`$UPTIME_END\`"
    echo "  (the machine may be shared with other work: the load average before each phase is in the last column)."
    echo "- Release binaries, RUST_LOG=warn, defaults (\`HTTP_WORKERS\` = $(nproc)) except"
    echo "  \`RATE_LIMIT_ENABLED=false\` on the gateway (one client at thousands of req/s); Postgres"
    echo "  and Redis throwaway, on this machine. Everything the run starts is ${NICE_NOTE:-at nice 0}."
    echo "- $NGINX_VERSION, $NGINX_WORKERS workers, unprivileged, \`upstream\` with \`keepalive 64\`,"
    echo "  \`proxy_http_version 1.1\`, \`Connection \"\"\`, the internal headers set by \`proxy_set_header\`."
    echo "- Load: $OHA_VERSION, open loop: \`-q RATE --latency-correction -c $CONNS -z ${DURATION}s\`, keep-alive;"
    echo "  latency counts from when each request was due (coordinated omission corrected)."
    echo "  Every request is \`GET /api/v1/cart\` of one guest cart with 3 lines ($CART_BYTES bytes), a cache hit."
    echo "  cart-svc direct gets the internal headers; the gateway the session's \`X-Session-Token\`"
    echo "  (it asks session-svc, then forwards to cart-svc); nginx no credential (it adds them)."
    echo
    echo "| target | rate req/s | achieved req/s | 200s / requests | p50 ms | p99 ms | p99.9 ms | max ms | statuses | load avg at start |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    tail -n +2 "$RESULTS" | awk -F'\t' '{ printf "| %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $16 }'
    echo
    echo "Highest rate tried whose p99 stayed under $P99_SLO_MS ms with every answer a 200 and at least"
    echo "95 % of the rate achieved:"
    echo
    for t in "${TARGETS[@]}"; do
        best=$(tail -n +2 "$RESULTS" | awk -F'\t' -v t="$t" -v slo="$P99_SLO_MS" '
            $1 == t && $7 != "" && $7 + 0 < slo && $4 == $5 && $3 + 0 >= 0.95 * $2 && $2 + 0 > best { best = $2 + 0 }
            END { print (best ? best " req/s" : "none of the rates tried") }')
        echo "- $t: $best"
    done
    echo
    echo "CPU per request in µs (user + system from \`/proc/<pid>/stat\` over the phase, all threads;"
    echo "nginx = master + workers; busy = share of all $(nproc) CPUs in use, everyone included):"
    echo
    echo "| target | rate req/s | gateway | session-svc | cart-svc | nginx | proxy total | busy |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    tail -n +2 "$RESULTS" | awk -F'\t' '{
        proxy = ($1 == "gateway") ? $11 + $12 : (($1 == "nginx") ? $14 : 0)
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $11, $12, $13, $14, ($1 == "cart-svc" ? "–" : proxy), $15 }'
    echo
    echo "(proxy total: the gateway plus the session-svc lookup it makes per request; nginx alone.)"
    echo
    echo "<!-- bench-gateway:end -->"
} >"$REPORT"
printf '\n' >&2
cat "$REPORT"

# ------------------------------------------------------------------ docs/PERFORMANCE.md
write_doc() {
    local placeholder=$TMP/placeholder.md new=$TMP/PERFORMANCE.md
    {
        echo "### Analysis"
        echo
        echo "_Not written yet: read the figures above and write the analysis here by hand (re-runs keep it)._"
    } >"$placeholder"
    awk -v title="$SECTION_TITLE" -v report="$REPORT" -v placeholder="$placeholder" '
        function emit(f,   l) { while ((getline l < f) > 0) print l; close(f) }
        function flush_section(   i, skipping) {
            print title
            if (!has_block) { print ""; emit(report); print ""; emit(placeholder); print ""; done = 1; return }
            skipping = 0
            for (i = 1; i <= n; i++) {
                if (buf[i] ~ /^<!-- bench-gateway:begin/) { emit(report); skipping = 1; continue }
                if (skipping && buf[i] ~ /^<!-- bench-gateway:end/) { skipping = 0; continue }
                if (!skipping) print buf[i]
            }
            done = 1
        }
        BEGIN { state = "before"; done = 0 }
        state == "before" && $0 == title { state = "in"; n = 0; has_block = 0; next }
        state == "in" && /^## / { state = "after"; flush_section() }
        state == "in" { buf[++n] = $0; if ($0 ~ /^<!-- bench-gateway:begin/) has_block = 1; next }
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
