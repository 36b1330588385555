# Helpers shared by the benchmark scripts (scripts/bench*.sh). Source after defining
# `say MESSAGE` (each script prefixes its own tag).

# stop_pid NAME PID [SIGNAL]: signal a process (TERM by default), wait up to 10 s for it
# to exit, then kill it.
stop_pid() {
    local name=$1 pid=$2 sig=${3:-TERM} i
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) did not stop; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# ticks_of PID...: user + system CPU ticks of these processes, all threads (/proc/<pid>/stat).
ticks_of() {
    local pid line total=0
    local -a f
    for pid in "$@"; do
        { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
        read -ra f <<<"${line##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
