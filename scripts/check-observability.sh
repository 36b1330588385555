#!/usr/bin/env bash
# Offline checks of the Prometheus rules and Grafana dashboards (deploy/prometheus,
# deploy/grafana). Needs promtool (Debian's `prometheus` package) and Python 3 with
# PyYAML; as root with apt-get it installs what is missing.
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: scripts/check-observability.sh [--sync] [--metrics FILE]

Checks, each printed as it runs:
  - the Helm chart's copies of deploy/prometheus/rules/*.yml and the rendered
    k8s/components/monitoring/prometheusrule.yaml are current (--sync rewrites them);
  - promtool check rules deploy/prometheus/rules/*.yml;
  - promtool test rules deploy/prometheus/tests/*.yml (each alert fires when it should
    and stays quiet when it should);
  - every alert has a severity, summary, description and a runbook section in
    docs/runbooks.md;
  - promtool check config deploy/prometheus/prometheus.yml;
  - the dashboards (deploy/grafana/dashboards/*.json) use the `datasource` variable and
    $__rate_interval, and every PromQL expression in them parses (written into a
    temporary rules file as recording rules, through promtool check rules);
  - every metric name the rules and dashboards read is in FILE (default
    deploy/prometheus/metrics.txt: one metric family per line, first word).
    crates/e2e/tests/observability.rs checks the same names against the live services.

  --sync          rewrite the chart's rule copies and the kustomize PrometheusRule from
                  deploy/prometheus/rules/ before checking
  --metrics FILE  the list of known metric names (e.g. names from a scrape)
EOF2
}

SYNC=0
METRICS=""
while (($# > 0)); do
    case $1 in
        --sync) SYNC=1 ;;
        --metrics)
            [[ $# -ge 2 ]] || { usage >&2; exit 2; }
            METRICS=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
    shift
done
# CI gives no stdin: nothing may wait on it.
if [[ ! -t 0 ]]; then exec </dev/null; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
METRICS=${METRICS:-$ROOT/deploy/prometheus/metrics.txt}

say() { printf '[observability] %s\n' "$*" >&2; }
die() {
    printf '[observability] ERROR: %s\n' "$*" >&2
    exit 1
}

# Installs Debian packages the way scripts/lib/datastores.sh does: as root with
# apt-get, else say what to install.
apt_install() {
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing $* (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null ||
            { DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null; } ||
            die "apt-get install $* failed"
    else
        die "missing: $* (install them, e.g. sudo apt-get install -y $*)"
    fi
}

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3
"$PYTHON" -c 'import yaml' 2>/dev/null || apt_install python3-yaml
"$PYTHON" -c 'import yaml' 2>/dev/null ||
    die "$PYTHON cannot import yaml (python3-yaml is for /usr/bin/python3: set PYTHON=/usr/bin/python3)"
if ! command -v promtool >/dev/null 2>&1; then
    apt_install prometheus
    # The package starts its own server on :9090 where an init system runs it; we only
    # want promtool (scripts/up.sh --observe runs a Prometheus of its own).
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service prometheus stop >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing prometheus"
fi

OBS=$ROOT/scripts/observability/obs.py
TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-observability.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
FAILED=()

# check TITLE CMD...: run one check, print its output indented, remember a failure.
check() {
    local title=$1 t0=$SECONDS rc=0
    shift
    "$@" >"$TMP/out" 2>&1 || rc=$?
    if ((rc == 0)); then
        say "ok   $title ($((SECONDS - t0))s): $(grep -v '^\s*$' "$TMP/out" | tail -n 1)"
    else
        say "FAIL $title"
        sed 's/^/    /' "$TMP/out" >&2
        FAILED+=("$title")
    fi
}

say "$(promtool --version 2>&1 | head -n 1)"
if ((SYNC)); then
    "$PYTHON" "$OBS" sync
fi
check "chart and kustomize copies of the rules are current" "$PYTHON" "$OBS" sync --check
check "promtool check rules deploy/prometheus/rules" promtool check rules deploy/prometheus/rules/*.yml
check "promtool test rules deploy/prometheus/tests" promtool test rules deploy/prometheus/tests/*.yml
check "alerts: severity, annotations, runbook sections" "$PYTHON" "$OBS" runbooks
check "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
dashboard_exprs() {
    "$PYTHON" "$OBS" exprs "$TMP/dashboards.rules.yml" && promtool check rules "$TMP/dashboards.rules.yml"
}
check "dashboards: data source variable, \$__rate_interval, PromQL parses" dashboard_exprs
check "metric names read by rules and dashboards are in ${METRICS#"$ROOT"/}" "$PYTHON" "$OBS" known "$METRICS"

if ((${#FAILED[@]} == 0)); then
    say "all observability checks passed in $((SECONDS - START))s"
else
    say "FAILED after $((SECONDS - START))s: ${FAILED[*]}"
    exit 1
fi
