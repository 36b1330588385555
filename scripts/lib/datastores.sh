#!/usr/bin/env bash
# Helpers to run private Postgres and Redis instances for scripts/up.sh and
# scripts/test.sh. Source it; do not run it.
#
# Every function returns non-zero (after printing why) instead of exiting, so
# callers decide what is fatal. All paths given to these functions must be
# absolute. When run as root, Postgres is run as the `postgres` system user.
#
# Knobs: DS_TAG (prefix of messages, default "datastores"),
#        DS_WAIT_SECS (how long to wait for a server to answer, default 60),
#        PG_BINDIR (force the Postgres bin dir).
set -euo pipefail

if [[ -n ${__DATASTORES_SH_LOADED:-} ]]; then
    return 0
fi
__DATASTORES_SH_LOADED=1

: "${DS_TAG:=datastores}"
: "${DS_WAIT_SECS:=60}"

# runuser lives in /usr/sbin, which a non-login root PATH may lack.
DS_RUNUSER=$(command -v runuser 2>/dev/null || true)
for __ds_p in /usr/sbin/runuser /sbin/runuser; do
    if [[ -z $DS_RUNUSER && -x $__ds_p ]]; then DS_RUNUSER=$__ds_p; fi
done
unset __ds_p

ds_log() { printf '[%s] %s\n' "$DS_TAG" "$*" >&2; }
ds_err() { printf '[%s] ERROR: %s\n' "$DS_TAG" "$*" >&2; }

# ds_tail_log FILE [LINES]: print the last lines of a log file, indented.
ds_tail_log() {
    local file=$1 lines=${2:-30}
    if [[ -r $file ]]; then
        printf '[%s] ---- last %s lines of %s ----\n' "$DS_TAG" "$lines" "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/    /' >&2 || true
        printf '[%s] ---- end of %s ----\n' "$DS_TAG" "$file" >&2
    else
        ds_log "(no log at $file)"
    fi
}

# ds_pg_bindir: print the directory holding initdb/pg_ctl/postgres.
ds_pg_bindir() {
    local d
    if [[ -n ${PG_BINDIR:-} && -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl ]]; then
        printf '%s\n' "$PG_BINDIR"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    fi
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
        printf '%s\n' "$d"
        return 0
    fi
    d=$(command -v initdb 2>/dev/null || true)
    if [[ -n $d ]]; then
        d=$(dirname "$(readlink -f "$d")")
        if [[ -x $d/pg_ctl && -x $d/postgres ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    fi
    return 1
}

# ds_pg_tool NAME: print the path of a Postgres client tool (psql, pg_isready),
# preferring the server's bin dir over the Debian wrapper in PATH.
ds_pg_tool() {
    local name=$1 d
    if d=$(ds_pg_bindir) && [[ -x $d/$name ]]; then
        printf '%s\n' "$d/$name"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    else
        return 1
    fi
}

# ds_ensure_packages [postgres] [redis] [curl]: make sure the named tools are
# installed; as root with apt-get, install what is missing, otherwise say which
# packages to install and fail.
ds_ensure_packages() {
    local want missing=() pass
    for pass in check recheck; do
        missing=()
        for want in "$@"; do
            case $want in
                postgres)
                    ds_pg_bindir >/dev/null || missing+=(postgresql)
                    { ds_pg_tool psql >/dev/null && ds_pg_tool pg_isready >/dev/null; } ||
                        missing+=(postgresql-client)
                    ;;
                redis)
                    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
                    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
                    ;;
                curl)
                    command -v curl >/dev/null 2>&1 || missing+=(curl)
                    ;;
                *)
                    ds_err "ds_ensure_packages: unknown component '$want'"
                    return 1
                    ;;
            esac
        done
        if ((${#missing[@]} == 0)); then
            break
        fi
        if [[ $pass == recheck ]]; then
            ds_err "still missing after apt-get install: ${missing[*]}"
            return 1
        fi
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            ds_log "installing missing packages: ${missing[*]} (apt-get)"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null || {
                ds_err "apt-get update failed"
                return 1
            }
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" </dev/null || {
                ds_err "apt-get install ${missing[*]} failed"
                return 1
            }
        else
            ds_err "missing packages: ${missing[*]}"
            ds_err "install them, e.g.: sudo apt-get install -y ${missing[*]}"
            return 1
        fi
    done
    if [[ " $* " == *" postgres "* && $EUID -eq 0 ]]; then
        if ! id -u postgres >/dev/null 2>&1; then
            ds_err "running as root but there is no 'postgres' system user to run Postgres as"
            ds_err "(it comes with Debian's postgresql package); create one or run as a normal user"
            return 1
        fi
        if [[ -z $DS_RUNUSER ]]; then
            ds_err "running as root but 'runuser' (util-linux) is missing"
            return 1
        fi
    fi
}

# ds_port_in_use PORT [HOST]: succeed when something accepts TCP connections on
# HOST:PORT (default 127.0.0.1).
ds_port_in_use() {
    local port=$1 host=${2:-127.0.0.1} rc=0
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null || rc=$?
    # 0: connected; 124: connection hangs (a listener with a full backlog)
    [[ $rc -eq 0 || $rc -eq 124 ]]
}

# ds_free_port: print a TCP port on 127.0.0.1 nobody listens on (20000-31999,
# below Linux's ephemeral range).
ds_free_port() {
    local i port
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        if ! ds_port_in_use "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    ds_err "could not find a free TCP port on 127.0.0.1"
    return 1
}

# ds_as_pg CMD...: run CMD as the postgres user when we are root (from / so an
# unreadable working directory does not matter), else as ourselves.
ds_as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && "$DS_RUNUSER" -u postgres -- "$@")
    else
        "$@"
    fi
}

# ds_pg_can_reach DIR: succeed when the user Postgres runs as can enter DIR,
# or, if DIR does not exist yet, its nearest existing parent.
ds_pg_can_reach() {
    local dir=$1
    while [[ ! -e $dir && $dir != / ]]; do
        dir=$(dirname "$dir")
    done
    [[ $EUID -ne 0 ]] && return 0
    # shellcheck disable=SC2016 # expanded by the inner sh
    (cd / && "$DS_RUNUSER" -u postgres -- sh -c 'cd "$1"' sh "$dir") 2>/dev/null
}

# ds_pg_make_reachable DIR: as root, make sure the postgres user can enter DIR;
# a directory of ours that only lacks o+x (e.g. from mktemp -d) gets it.
ds_pg_make_reachable() {
    local dir=$1
    [[ $EUID -ne 0 ]] && return 0
    ds_pg_can_reach "$dir" && return 0
    if [[ -d $dir && -O $dir ]] && ds_pg_can_reach "$(dirname "$dir")"; then
        ds_log "letting the postgres user traverse $dir (chmod o+x)"
        chmod o+x "$dir" || return 1
        ds_pg_can_reach "$dir" && return 0
    fi
    ds_err "the postgres user (Postgres refuses to run as root) cannot reach $dir:"
    ds_err "a parent directory is closed to other users (e.g. /root); use a dir under /tmp or /var/tmp"
    return 1
}

# ds_pid_cwd_is PID DIR: succeed when process PID is alive and its working
# directory is DIR (Postgres and Redis chdir into their data dir).
ds_pid_cwd_is() {
    local pid=$1 dir=$2 cwd
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    [[ $cwd == "$(readlink -f "$dir")" ]]
}

# ds_pg_running_pid DATADIR: print the postmaster pid when a Postgres of ours is
# running on DATADIR.
ds_pg_running_pid() {
    local datadir=$1 pid
    [[ -r $datadir/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$datadir/postmaster.pid" 2>/dev/null || true)
    ds_pid_cwd_is "$pid" "$datadir" || return 1
    printf '%s\n' "$pid"
}

# ds_pg_wait PORT LOGFILE [SECS]: wait until Postgres on 127.0.0.1:PORT accepts
# connections; on timeout show the log and fail.
ds_pg_wait() {
    local port=$1 log=$2 secs=${3:-$DS_WAIT_SECS} isready deadline
    isready=$(ds_pg_tool pg_isready) || {
        ds_err "pg_isready not found"
        return 1
    }
    deadline=$((SECONDS + secs))
    until "$isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 2 </dev/null; do
        if ((SECONDS >= deadline)); then
            ds_err "Postgres on 127.0.0.1:$port did not answer within ${secs}s"
            ds_tail_log "$log"
            return 1
        fi
        sleep 0.3
    done
}

# ds_pg_start DATADIR PORT LOGFILE [throwaway|persistent]: start a Postgres
# cluster (initdb first when DATADIR is empty) listening on 127.0.0.1:PORT
# only, with its unix socket in a private dir next to DATADIR.
ds_pg_start() {
    local datadir=$1 port=$2 log=$3 mode=${4:-persistent}
    local bindir sockdir opts
    bindir=$(ds_pg_bindir) || {
        ds_err "Postgres server binaries not found (package postgresql)"
        return 1
    }
    mkdir -p "$datadir" "$(dirname "$log")" || return 1
    ds_pg_make_reachable "$(dirname "$datadir")" || return 1
    ds_pg_make_reachable "$(dirname "$log")" || return 1
    [[ -e $log ]] || : >"$log" || return 1
    if [[ $EUID -eq 0 ]]; then
        chown postgres: "$datadir" "$log" || return 1
    fi
    chmod 700 "$datadir" || return 1

    if [[ ! -e $datadir/PG_VERSION ]]; then
        if [[ -n $(ls -A "$datadir") ]]; then
            ds_err "$datadir is not empty but holds no Postgres cluster; remove it or pick another dir"
            return 1
        fi
        ds_log "initdb $datadir"
        if ! ds_as_pg "$bindir/initdb" -D "$datadir" -A trust -U postgres --no-sync \
            -E UTF8 --locale=C >>"$log" 2>&1 </dev/null; then
            ds_err "initdb failed"
            ds_tail_log "$log"
            return 1
        fi
    fi

    # Unix socket in a private dir (not /var/run/postgresql, which the system
    # cluster owns); fall back to TCP only when the path is too long for a socket.
    sockdir=$(dirname "$datadir")/pg-run
    if ((${#sockdir} > 90)); then
        ds_log "socket dir path too long ($sockdir); Postgres will listen on TCP only"
        sockdir=""
    else
        mkdir -p "$sockdir" || return 1
        if [[ $EUID -eq 0 ]]; then chown postgres: "$sockdir" || return 1; fi
        chmod 700 "$sockdir" || return 1
    fi

    opts="-c listen_addresses=127.0.0.1 -p $port -c max_connections=500"
    opts+=" -c unix_socket_directories='$sockdir'"
    if [[ $mode == throwaway ]]; then
        opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    ds_log "starting Postgres ($mode) on 127.0.0.1:$port, data $datadir, log $log"
    if ! ds_as_pg "$bindir/pg_ctl" -D "$datadir" -l "$log" -w -t "$DS_WAIT_SECS" \
        -o "$opts" start >/dev/null </dev/null; then
        ds_err "Postgres failed to start on 127.0.0.1:$port"
        ds_tail_log "$log"
        return 1
    fi
    ds_pg_wait "$port" "$log"
}

# ds_pg_stop DATADIR: stop the cluster on DATADIR (pg_ctl stop -m fast) if it runs.
ds_pg_stop() {
    local datadir=$1 bindir
    [[ -e $datadir/postmaster.pid ]] || return 0
    bindir=$(ds_pg_bindir) || return 1
    ds_log "stopping Postgres ($datadir)"
    if ! ds_as_pg "$bindir/pg_ctl" -D "$datadir" -m fast -w -t 30 stop >/dev/null 2>&1 </dev/null; then
        local pid
        if pid=$(ds_pg_running_pid "$datadir"); then
            ds_err "pg_ctl stop failed; sending SIGQUIT to postmaster $pid"
            kill -QUIT "$pid" 2>/dev/null || true
        fi
    fi
}

# ds_pg_stop_leftover DATADIR: stop a Postgres left running on DATADIR by an
# earlier run (it may listen on another port) and drop a stale pid file.
ds_pg_stop_leftover() {
    local datadir=$1 pid
    [[ -e $datadir/postmaster.pid ]] || return 0
    if pid=$(ds_pg_running_pid "$datadir"); then
        ds_log "found Postgres left running from a previous run (pid $pid); restarting it cleanly"
        ds_pg_stop "$datadir"
    else
        ds_log "removing stale $datadir/postmaster.pid"
        rm -f "$datadir/postmaster.pid"
    fi
}

# ds_pg_create_db PORT DBNAME: create database DBNAME on 127.0.0.1:PORT unless
# it exists.
ds_pg_create_db() {
    local port=$1 db=$2 psql exists
    [[ $db =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || {
        ds_err "bad database name '$db'"
        return 1
    }
    psql=$(ds_pg_tool psql) || {
        ds_err "psql not found"
        return 1
    }
    exists=$("$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "select 1 from pg_database where datname = '$db'" </dev/null) || return 1
    if [[ $exists != 1 ]]; then
        ds_log "creating database $db"
        "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -c "create database \"$db\"" </dev/null >/dev/null || return 1
    fi
}

# ds_redis_wait PORT LOGFILE [SECS]: wait until Redis on 127.0.0.1:PORT answers
# PING; on timeout show the log and fail.
ds_redis_wait() {
    local port=$1 log=$2 secs=${3:-$DS_WAIT_SECS} deadline
    deadline=$((SECONDS + secs))
    until [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null </dev/null) == PONG ]]; do
        if ((SECONDS >= deadline)); then
            ds_err "Redis on 127.0.0.1:$port did not answer within ${secs}s"
            ds_tail_log "$log"
            return 1
        fi
        sleep 0.2
    done
}

# ds_redis_start DIR PORT PIDFILE LOGFILE [throwaway|persistent]: start a
# daemonized redis-server on 127.0.0.1:PORT with its data in DIR.
ds_redis_start() {
    local dir=$1 port=$2 pidfile=$3 log=$4 mode=${5:-persistent}
    local persist=()
    mkdir -p "$dir" "$(dirname "$pidfile")" "$(dirname "$log")" || return 1
    if [[ $mode == throwaway ]]; then
        persist=(--save '' --appendonly no)
    else
        persist=(--save 60 1 --appendonly no)
    fi
    ds_log "starting Redis ($mode) on 127.0.0.1:$port, data $dir, log $log"
    if ! redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
        --pidfile "$pidfile" --logfile "$log" --dir "$dir" "${persist[@]}" </dev/null >/dev/null; then
        ds_err "redis-server failed to start"
        ds_tail_log "$log"
        return 1
    fi
    ds_redis_wait "$port" "$log"
}

# ds_redis_stop PORT PIDFILE [nosave|save]: shut a Redis down (SHUTDOWN NOSAVE
# by default) and wait for its process to go; kill it if it will not.
ds_redis_stop() {
    local port=$1 pidfile=$2 how=${3:-nosave} pid="" i
    [[ -r $pidfile ]] && pid=$(cat "$pidfile" 2>/dev/null || true)
    ds_log "stopping Redis on 127.0.0.1:$port"
    redis-cli -h 127.0.0.1 -p "$port" shutdown "$how" </dev/null >/dev/null 2>&1 || true
    if [[ $pid =~ ^[0-9]+$ ]]; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            ds_err "Redis (pid $pid) did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# ds_redis_stop_leftover DIR PIDFILE: stop a redis-server left running from an
# earlier run (pidfile names a live process whose cwd is DIR), letting it save.
ds_redis_stop_leftover() {
    local dir=$1 pidfile=$2 pid i
    [[ -r $pidfile ]] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if ds_pid_cwd_is "$pid" "$dir"; then
        ds_log "found Redis left running from a previous run (pid $pid); restarting it cleanly"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            ds_err "Redis (pid $pid) did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
}
