#!/usr/bin/env bash
# Bring the whole platform up in the foreground: Postgres + Redis (own ones
# unless DATABASE_URL / REDIS_URL are set), build, migrate, start the five
# services, wait until they are ready. Ctrl-C stops everything it started.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/up.sh [--no-build] [--observe] [--help]

Runs the whole platform locally in the foreground; Ctrl-C stops it.

  --no-build   do not run `cargo build --release --bins` (use target/release as is)
  --observe    also run a local Prometheus (Debian's `prometheus` package) scraping every
               service, with the rules of deploy/prometheus/rules loaded; data in
               .data/prometheus, log in .data/logs/prometheus.log
  -h, --help   show this help

Environment:
  DATABASE_URL   use this Postgres instead of starting one (the database must exist)
  REDIS_URL      use this Redis instead of starting one
  UP_PG_PORT     port of the Postgres up.sh starts      (default 54329; data in .data/pg)
  UP_REDIS_PORT  port of the Redis up.sh starts         (default 63799; data in .data/redis)
  INTERNAL_TOKEN shared secret; default: generated once into .data/internal-token
  GATEWAY_LISTEN AUTH_LISTEN SESSION_LISTEN CART_LISTEN CLEANUP_LISTEN
                 listen addresses (default 127.0.0.1:8080 .. 8084)
  AUTH_URL SESSION_URL CART_URL
                 peer URLs (default: derived from the *_LISTEN addresses)
  UP_PROMETHEUS_LISTEN  where --observe's Prometheus listens (default 127.0.0.1:9090)
  Any other variable of the services (RUST_LOG, SHUTDOWN_DRAIN_SECS, ...) is passed through.

Logs: .data/logs/<service>.log (appended). Data in .data/ is kept across runs
(rm -rf .data to start afresh); when run as root from a directory the postgres user
cannot enter (e.g. under /root), the Postgres data goes to /var/tmp/cart-platform-pg-<hash>.
EOF
}

BUILD=1
OBSERVE=0
while (($# > 0)); do
    case $1 in
        --no-build) BUILD=0 ;;
        --observe) OBSERVE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            printf 'up.sh: unknown argument: %s\n\n' "$1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DS_TAG=up
# shellcheck source=scripts/lib/datastores.sh
source "$ROOT/scripts/lib/datastores.sh"

say() { printf '[up] %s\n' "$*" >&2; }
die() {
    printf '[up] ERROR: %s\n' "$*" >&2
    exit 1
}

DATA_DIR=$ROOT/.data
LOG_DIR=$DATA_DIR/logs
RUN_DIR=$DATA_DIR/run
BIN_DIR=$ROOT/target/release

SERVICES=(gateway auth-svc session-svc cart-svc cleanup-worker)
declare -A LISTEN_VAR=(
    [gateway]=GATEWAY_LISTEN [auth-svc]=AUTH_LISTEN [session-svc]=SESSION_LISTEN
    [cart-svc]=CART_LISTEN [cleanup-worker]=CLEANUP_LISTEN
)
declare -A DEFAULT_PORT=(
    [gateway]=8080 [auth-svc]=8081 [session-svc]=8082 [cart-svc]=8083 [cleanup-worker]=8084
)

# listen address of a service (host:port), exported so the service sees it
declare -A LISTEN
for svc in "${SERVICES[@]}"; do
    var=${LISTEN_VAR[$svc]}
    LISTEN[$svc]=${!var:-127.0.0.1:${DEFAULT_PORT[$svc]}}
    export "$var=${LISTEN[$svc]}"
done

# host:port to connect to for a listen address (wildcards -> loopback)
connect_addr() {
    local addr=$1 host port
    host=${addr%:*}
    port=${addr##*:}
    case $host in
        0.0.0.0 | "" | "[::]" | "::") host=127.0.0.1 ;;
    esac
    printf '%s:%s\n' "$host" "$port"
}

export AUTH_URL=${AUTH_URL:-http://$(connect_addr "${LISTEN[auth-svc]}")}
export SESSION_URL=${SESSION_URL:-http://$(connect_addr "${LISTEN[session-svc]}")}
export CART_URL=${CART_URL:-http://$(connect_addr "${LISTEN[cart-svc]}")}

# ---------------------------------------------------------------- clean-up
PG_STARTED=""   # data dir of the Postgres we started
REDIS_STARTED="" # port of the Redis we started
REDIS_PIDFILE=$RUN_DIR/redis.pid
declare -A PIDS=()
FORCE_KILL=0
CLEANED=0

# shellcheck disable=SC2317 # invoked from traps
stop_services() {
    local svc pid deadline
    local -a alive
    ((${#PIDS[@]} > 0)) || return 0
    for svc in "${!PIDS[@]}"; do
        pid=${PIDS[$svc]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    say "waiting for the services to stop (up to 15s; Ctrl-C again to kill them now)"
    deadline=$((SECONDS + 15))
    while :; do
        alive=()
        for svc in "${!PIDS[@]}"; do
            kill -0 "${PIDS[$svc]}" 2>/dev/null && alive+=("$svc")
        done
        ((${#alive[@]} == 0)) && break
        if ((FORCE_KILL)) || ((SECONDS >= deadline)); then
            say "killing: ${alive[*]}"
            for svc in "${alive[@]}"; do
                kill -KILL "${PIDS[$svc]}" 2>/dev/null || true
            done
            break
        fi
        sleep 0.2
    done
    for svc in "${!PIDS[@]}"; do
        wait "${PIDS[$svc]}" 2>/dev/null || true
        rm -f "$RUN_DIR/$svc.pid"
    done
    PIDS=()
}

# shellcheck disable=SC2317 # invoked from traps
cleanup() {
    ((CLEANED)) && return 0
    CLEANED=1
    # A second Ctrl-C while stopping: kill the services at once, but still
    # stop the datastores.
    trap 'FORCE_KILL=1' INT TERM
    stop_services || true
    trap '' INT TERM
    if [[ -n $PG_STARTED ]]; then
        ds_pg_stop "$PG_STARTED" || true
    fi
    if [[ -n $REDIS_STARTED ]]; then
        ds_redis_stop "$REDIS_STARTED" "$REDIS_PIDFILE" save || true
    fi
}

# shellcheck disable=SC2317 # invoked from traps
on_signal() {
    printf '\n' >&2
    say "got SIG$1, stopping everything"
    cleanup
    trap - EXIT
    if [[ $1 == INT ]]; then exit 130; else exit 143; fi
}

trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'rc=$?; cleanup; exit $rc' EXIT

# ---------------------------------------------------------------- checks
check_service_ports() {
    local svc addr busy=() pid pids=()
    for svc in "${SERVICES[@]}"; do
        addr=$(connect_addr "${LISTEN[$svc]}")
        if ds_port_in_use "${addr##*:}" "${addr%:*}"; then
            busy+=("$svc on ${LISTEN[$svc]} (${LISTEN_VAR[$svc]})")
        fi
        if [[ -r $RUN_DIR/$svc.pid ]]; then
            pid=$(cat "$RUN_DIR/$svc.pid" 2>/dev/null || true)
            if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
                [[ $(tr "\0" " " <"/proc/$pid/cmdline" 2>/dev/null) == *"$BIN_DIR/$svc"* ]]; then
                pids+=("$pid")
            fi
        fi
    done
    if ((${#busy[@]} > 0)); then
        printf '[up] ERROR: these ports are already in use:\n' >&2
        printf '[up]   %s\n' "${busy[@]}" >&2
        printf '[up] Probably a previous scripts/up.sh is still running (stop it with Ctrl-C),\n' >&2
        if ((${#pids[@]} > 0)); then
            printf '[up] or its services were left behind: kill %s\n' "${pids[*]}" >&2
        fi
        printf '[up] or set the *_LISTEN variables above to free ports.\n' >&2
        exit 1
    fi
}

need_cmds=(curl)
if [[ -z ${DATABASE_URL:-} ]]; then need_cmds+=(postgres); fi
if [[ -z ${REDIS_URL:-} ]]; then need_cmds+=(redis); fi
ds_ensure_packages "${need_cmds[@]}"
PROM_LISTEN=${UP_PROMETHEUS_LISTEN:-127.0.0.1:9090}
if ((OBSERVE)); then
    if ! command -v prometheus >/dev/null 2>&1; then
        [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
            die "--observe needs Prometheus: sudo apt-get install -y prometheus"
        say "installing prometheus (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus </dev/null >/dev/null ||
            die "apt-get install prometheus failed"
        # The package may start its own server on :9090; ours is the one we want.
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
    prom_conn=$(connect_addr "$PROM_LISTEN")
    if ds_port_in_use "${prom_conn##*:}" "${prom_conn%:*}"; then
        die "$PROM_LISTEN (for Prometheus) is already in use; set UP_PROMETHEUS_LISTEN to a free address"
    fi
fi
if ((BUILD)) && ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found: install the Rust toolchain (https://rustup.rs) or use --no-build"
fi

check_service_ports

mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR"
chmod 755 "$DATA_DIR" # the postgres user has to traverse it when we run as root

# ---------------------------------------------------------------- token
if [[ -z ${INTERNAL_TOKEN:-} ]]; then
    token_file=$DATA_DIR/internal-token
    if [[ ! -s $token_file ]]; then
        (
            umask 077
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$token_file"
        )
        say "generated INTERNAL_TOKEN into $token_file"
    fi
    chmod 600 "$token_file"
    INTERNAL_TOKEN=$(<"$token_file")
fi
if ((${#INTERNAL_TOKEN} < 32)); then
    die "INTERNAL_TOKEN must be at least 32 characters (unset it to use a generated one)"
fi
export INTERNAL_TOKEN

# ---------------------------------------------------------------- build
if ((BUILD)); then
    say "cargo build --release --bins (the first build takes a few minutes)"
    SQLX_OFFLINE=${SQLX_OFFLINE:-true} cargo build --release --bins
fi
for svc in "${SERVICES[@]}"; do
    [[ -x $BIN_DIR/$svc ]] || die "$BIN_DIR/$svc is missing; run without --no-build"
done
check_service_ports # again: the build may have taken minutes

# ---------------------------------------------------------------- datastores
# First stop leftovers of ours and check both ports, then start both.
OWN_PG=""
OWN_REDIS=""
if [[ -n ${DATABASE_URL:-} ]]; then
    say "using Postgres from DATABASE_URL"
else
    OWN_PG=1
    pg_port=${UP_PG_PORT:-54329}
    pg_base=$DATA_DIR
    pg_log=$LOG_DIR/postgres.log
    if ! ds_pg_can_reach "$DATA_DIR"; then
        hash=$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
        pg_base=/var/tmp/cart-platform-pg-$hash
        pg_log=$pg_base/postgres.log
        say "NOTE: the postgres user cannot reach $DATA_DIR (some parent dir of"
        say "      $ROOT is closed to other users, e.g. /root);"
        say "      keeping the Postgres data in $pg_base instead"
        mkdir -p "$pg_base"
        chmod 755 "$pg_base"
    fi
    pg_data=$pg_base/pg
    ds_pg_stop_leftover "$pg_data"
fi
if [[ -n ${REDIS_URL:-} ]]; then
    say "using Redis from REDIS_URL"
else
    OWN_REDIS=1
    redis_port=${UP_REDIS_PORT:-63799}
    redis_dir=$DATA_DIR/redis
    ds_redis_stop_leftover "$redis_dir" "$REDIS_PIDFILE"
fi
if [[ -n $OWN_PG ]] && ds_port_in_use "$pg_port"; then
    die "port $pg_port (for Postgres) is already in use by another program; set UP_PG_PORT to a free port, or DATABASE_URL to use an existing Postgres"
fi
if [[ -n $OWN_REDIS ]] && ds_port_in_use "$redis_port"; then
    die "port $redis_port (for Redis) is already in use by another program; set UP_REDIS_PORT to a free port, or REDIS_URL to use an existing Redis"
fi
if [[ -n $OWN_PG ]]; then
    PG_STARTED=$pg_data
    ds_pg_start "$pg_data" "$pg_port" "$pg_log" persistent
    ds_pg_create_db "$pg_port" cart_platform
    export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/cart_platform
fi
if [[ -n $OWN_REDIS ]]; then
    REDIS_STARTED=$redis_port
    ds_redis_start "$redis_dir" "$redis_port" "$REDIS_PIDFILE" "$LOG_DIR/redis.log" persistent
    export REDIS_URL=redis://127.0.0.1:$redis_port
fi

# ---------------------------------------------------------------- migrate
for svc in auth-svc cart-svc; do
    say "$svc migrate"
    if ! "$BIN_DIR/$svc" migrate >>"$LOG_DIR/$svc.log" 2>&1 </dev/null; then
        ds_tail_log "$LOG_DIR/$svc.log"
        die "$svc migrate failed (log: $LOG_DIR/$svc.log)"
    fi
done

# ---------------------------------------------------------------- start
for svc in "${SERVICES[@]}"; do
    log=$LOG_DIR/$svc.log
    printf '\n===== %s up.sh starting %s =====\n' "$(date '+%F %T')" "$svc" >>"$log"
    "$BIN_DIR/$svc" >>"$log" 2>&1 </dev/null &
    PIDS[$svc]=$!
    echo "${PIDS[$svc]}" >"$RUN_DIR/$svc.pid"
    say "started $svc (pid ${PIDS[$svc]}) on ${LISTEN[$svc]}"
done

# ---------------------------------------------------------------- ready?
declare -A READY=() LAST_CODE=()
deadline=$((SECONDS + 60))
while ((${#READY[@]} < ${#SERVICES[@]})); do
    for svc in "${SERVICES[@]}"; do
        [[ -n ${READY[$svc]:-} ]] && continue
        if ! kill -0 "${PIDS[$svc]}" 2>/dev/null; then
            ds_tail_log "$LOG_DIR/$svc.log"
            die "$svc exited during start-up (log: $LOG_DIR/$svc.log)"
        fi
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$(connect_addr "${LISTEN[$svc]}")/readyz" || true)
        LAST_CODE[$svc]=${code:-000}
        if [[ $code == 200 ]]; then
            READY[$svc]=1
            say "$svc is ready"
        fi
    done
    ((${#READY[@]} == ${#SERVICES[@]})) && break
    if ((SECONDS >= deadline)); then
        for svc in "${SERVICES[@]}"; do
            if [[ -z ${READY[$svc]:-} ]]; then
                printf '[up] %s is not ready after 60s (GET http://%s/readyz answered %s)\n' "$svc" "$(connect_addr "${LISTEN[$svc]}")" "${LAST_CODE[$svc]:-nothing}" >&2
                ds_tail_log "$LOG_DIR/$svc.log"
            fi
        done
        die "not every service became ready within 60s; stopping"
    fi
    sleep 0.5
done

# ---------------------------------------------------------------- prometheus
# --observe: a Prometheus of our own, scraping each service where it listens, with the
# repository's rules (the same files the chart and docker-compose load). Stopped with the
# services (it is one of PIDS).
if ((OBSERVE)); then
    prom_dir=$DATA_DIR/prometheus
    mkdir -p "$prom_dir/data"
    {
        printf '# Generated by scripts/up.sh --observe; rewritten at every start.\n'
        printf 'global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n'
        printf 'rule_files:\n  - %s/deploy/prometheus/rules/*.yml\n' "$ROOT"
        printf 'scrape_configs:\n'
        for svc in "${SERVICES[@]}"; do
            printf '  - job_name: %s\n    static_configs:\n      - targets: ["%s"]\n' \
                "$svc" "$(connect_addr "${LISTEN[$svc]}")"
        done
        printf '  - job_name: prometheus\n    static_configs:\n      - targets: ["%s"]\n' "$(connect_addr "$PROM_LISTEN")"
    } >"$prom_dir/prometheus.yml"
    printf '\n===== %s up.sh starting prometheus =====\n' "$(date '+%F %T')" >>"$LOG_DIR/prometheus.log"
    prometheus --config.file="$prom_dir/prometheus.yml" --storage.tsdb.path="$prom_dir/data" \
        --storage.tsdb.retention.time=2d --web.listen-address="$PROM_LISTEN" \
        >>"$LOG_DIR/prometheus.log" 2>&1 </dev/null &
    PIDS[prometheus]=$!
    echo "${PIDS[prometheus]}" >"$RUN_DIR/prometheus.pid"
    prom_url=http://$(connect_addr "$PROM_LISTEN")
    deadline=$((SECONDS + 30))
    until [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$prom_url/-/ready" || true) == 200 ]]; do
        if ! kill -0 "${PIDS[prometheus]}" 2>/dev/null || ((SECONDS >= deadline)); then
            ds_tail_log "$LOG_DIR/prometheus.log"
            die "Prometheus did not become ready on $PROM_LISTEN (log: $LOG_DIR/prometheus.log)"
        fi
        sleep 0.5
    done
    say "prometheus is ready on $prom_url (pid ${PIDS[prometheus]})"
fi

gw=$(connect_addr "${LISTEN[gateway]}")
db_shown=$DATABASE_URL
[[ -n $PG_STARTED ]] || db_shown="(DATABASE_URL from the environment)"
redis_shown=$REDIS_URL
[[ -n $REDIS_STARTED ]] || redis_shown="(REDIS_URL from the environment)"
{
    printf '\n  The platform is up.  Gateway: http://%s\n\n' "$gw"
    printf '  Logs:\n'
    for svc in "${SERVICES[@]}"; do
        printf '    %s\n' "$LOG_DIR/$svc.log"
    done
    [[ -n $PG_STARTED ]] && printf '    %s\n' "$pg_log"
    [[ -n $REDIS_STARTED ]] && printf '    %s\n' "$LOG_DIR/redis.log"
    printf '  Postgres: %s\n  Redis:    %s\n' "$db_shown" "$redis_shown"
    if ((OBSERVE)); then
        printf '  Prometheus: %s (alerts: %s/alerts; log %s)\n' "$prom_url" "$prom_url" "$LOG_DIR/prometheus.log"
    fi
    cat <<EOF

  Try it (start a session, then put something in its cart):
    TOKEN=\$(curl -s -X POST $gw/api/v1/sessions | sed 's/.*"session_token":"\([^"]*\)".*/\1/')
    curl -s -X POST $gw/api/v1/cart/items -H "X-Session-Token: \$TOKEN" \\
         -H 'Content-Type: application/json' -d '{"product_id":"sku-1","quantity":2}'

  Ctrl-C stops everything.

EOF
}

# ---------------------------------------------------------------- foreground
# Returns when any service exits (or a trapped signal arrives).
rc=0
wait -n "${PIDS[@]}" || rc=$?
for svc in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$svc]}" 2>/dev/null; then
        say "$svc exited (status $rc); stopping everything"
        ds_tail_log "$LOG_DIR/$svc.log" 20
    fi
done
exit 1
