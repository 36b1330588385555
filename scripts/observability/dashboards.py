#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/*.json (the committed dashboards come from here: edit
this file and run it, rather than the JSON, so the six dashboards stay alike).

Every panel reads only metrics listed in deploy/prometheus/metrics.txt (the catalogue
scripts/check-observability.sh and crates/e2e/tests/observability.rs check) through the
`datasource` variable, and rates use $__rate_interval. A panel given `needs=[...]` is
drawn only once every name in it is in the catalogue: the families that get their first
series from traffic the e2e observability test does not make (shedding, retries, rate
limits, logins, merges) wait there until that test can accept them; this script prints
what it left out. Planned metrics (DB pools, Redis call errors, idempotent replays,
offline ops) get panels when they exist: the README's Observability section lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "deploy" / "grafana" / "dashboards"
CATALOGUE = ROOT / "deploy" / "prometheus" / "metrics.txt"
DS = {"type": "prometheus", "uid": "${datasource}"}
SERVICES = ["gateway", "auth-svc", "session-svc", "cart-svc", "cleanup-worker"]
ALL_JOBS = "|".join(SERVICES)
NOT_OPS = 'http_route!~"/livez|/readyz|/metrics"'
API = 'http_route=~"/api/.+"'
RI = "$__rate_interval"
# Defaults of the gateway's and auth-svc's limits (crates/gateway/src/config.rs,
# crates/auth-svc/src/lib.rs), drawn as threshold lines: the limits are not exported.
UPSTREAM_MAX_IN_FLIGHT = 256


def catalogued() -> set[str]:
    names = set()
    for line in CATALOGUE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line.split()[0])
    return names


KNOWN = catalogued()
SKIPPED: set[str] = set()


def have(*names: str) -> bool:
    """Whether every name is in metrics.txt; remembers the panels left out."""
    missing = [n for n in names if n not in KNOWN]
    SKIPPED.update(missing)
    return not missing


class Board:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.next_id += 1
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str = "short", *,
              kind: str = "timeseries", width: int = 8, description: str = "",
              thresholds: list[tuple[str, float | None]] | None = None, max_: float | None = None,
              needs: list[str] | None = None) -> None:
        if needs and not have(*needs):
            return
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        field: dict = {"unit": unit}
        if thresholds:
            field["thresholds"] = {"mode": "absolute",
                                   "steps": [{"color": c, "value": v} for c, v in thresholds]}
            if kind == "timeseries":
                field["custom"] = {"thresholdsStyle": {"mode": "line"}}
        if max_ is not None:
            field["max"] = max_
            field["min"] = 0
        self.panels.append({
            "type": kind, "title": title, "id": self.next_id, "datasource": DS,
            "description": description,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": field, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
            "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": lf,
                         "range": kind == "timeseries", "instant": kind != "timeseries"}
                        for i, (e, lf) in enumerate(targets)],
        })
        self.next_id += 1
        self.x += width

    def dump(self, uid: str, title: str, description: str, instance_job: str | None = None) -> None:
        templating = [{"name": "datasource", "label": "Data source", "type": "datasource",
                       "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}]
        if instance_job:
            templating.append({
                "name": "instance", "label": "Instance", "type": "query", "datasource": DS,
                "query": {"query": f'label_values(up{{job="{instance_job}"}}, instance)', "refId": "instance"},
                "definition": f'label_values(up{{job="{instance_job}"}}, instance)',
                "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1,
            })
        d = {
            "uid": uid, "title": title, "description": description,
            "tags": ["cart-platform"], "timezone": "", "editable": True, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-3h", "to": "now"}, "timepicker": {},
            "templating": {"list": templating},
            "annotations": {"list": []},
            "links": [{"title": "cart-platform", "type": "dashboards", "tags": ["cart-platform"], "asDropdown": True}],
            "panels": self.panels,
        }
        (OUT / f"{uid}.json").write_text(json.dumps(d, indent=2) + "\n")


def red(b: Board, job: str, sel_extra: str = "") -> None:
    """Rate, errors and duration of one service, by route template."""
    sel = f'job="{job}", {NOT_OPS}{sel_extra}'
    b.row("Requests")
    b.panel("Request rate by route", [(
        f"sum by (http_request_method, http_route) (rate(http_server_request_duration_seconds_count{{{sel}}}[{RI}]))",
        "{{http_request_method}} {{http_route}}")], "reqps")
    b.panel("Responses by status", [(
        f"sum by (http_response_status_code) (rate(http_server_request_duration_seconds_count{{{sel}}}[{RI}]))",
        "{{http_response_status_code}}")], "reqps")
    b.panel("5xx and 503 ratio", [
        (f'sum(rate(http_server_request_duration_seconds_count{{{sel}, http_response_status_code=~"5.."}}[{RI}])) / '
         f"sum(rate(http_server_request_duration_seconds_count{{{sel}}}[{RI}]))", "5xx"),
        (f'sum(rate(http_server_request_duration_seconds_count{{{sel}, http_response_status_code="503"}}[{RI}])) / '
         f"sum(rate(http_server_request_duration_seconds_count{{{sel}}}[{RI}]))", "503 (shed or refused)"),
    ], "percentunit")
    b.row("Latency")
    for q, w in (("0.5", 12), ("0.99", 12)):
        b.panel(f"p{int(float(q) * 100)} by route", [(
            f"histogram_quantile({q}, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{{{sel}}}[{RI}])))",
            "{{http_route}}")], "s", width=w, thresholds=[("green", None), ("red", 0.15)],
            description="Goal: p99 < 150 ms at the gateway (NFR1).")


def process(b: Board, job: str, inst: str = "") -> None:
    sel = f'job=~"{job}"{inst}'
    b.row("Saturation (process)")
    b.panel("Up", [(f"up{{{sel}}}", "{{job}} {{instance}}")], "short", width=6, max_=1)
    b.panel("CPU", [(f"rate(process_cpu_seconds_total{{{sel}}}[{RI}])", "{{job}} {{instance}}")], "percentunit", width=6,
            description="CPU seconds per second: 1 = one core.")
    b.panel("Resident memory", [(f"process_resident_memory_bytes{{{sel}}}", "{{job}} {{instance}}")], "bytes", width=6)
    b.panel("Open file descriptors / limit", [(f"process_open_fds{{{sel}}} / process_max_fds{{{sel}}}", "{{job}} {{instance}}")],
            "percentunit", width=6, thresholds=[("green", None), ("orange", 0.8)], max_=1)


def slo(b: Board) -> None:
    b.row("SLO burn (gateway API; docs/runbooks.md)")
    b.panel("Availability burn rate (budget 0.1%)", [
        (f'job:slo_availability_errors:ratio_rate{w}{{job="gateway"}} / 0.001', w) for w in ("5m", "30m", "1h", "6h", "3d")],
        "short", thresholds=[("green", None), ("orange", 6), ("red", 14.4)],
        description="1 = the 30-day budget lasts exactly 30 days. Pages: 14.4 over 1h and 5m, 6 over 6h and 30m; ticket: 1 over 3d and 6h.")
    b.panel("Latency burn rate (budget: 1% slower than 150 ms)", [
        (f'job:slo_latency_errors:ratio_rate{w}{{job="gateway"}} / 0.01', w) for w in ("5m", "30m", "1h", "6h", "3d")],
        "short", thresholds=[("green", None), ("orange", 6), ("red", 14.4)])
    b.panel("SLIs over 1 day and 3 days", [
        ('1 - job:slo_availability_errors:ratio_rate1d{job="gateway"}', "availability 1d"),
        ('1 - job:slo_availability_errors:ratio_rate3d{job="gateway"}', "availability 3d"),
        ('1 - job:slo_latency_errors:ratio_rate1d{job="gateway"}', "in 150 ms 1d"),
        ('1 - job:slo_latency_errors:ratio_rate3d{job="gateway"}', "in 150 ms 3d"),
    ], "percentunit", kind="stat", thresholds=[("red", None), ("green", 0.99)])


def cache(b: Board, inst: str = "") -> None:
    sel = f'job="cart-svc"{inst}'
    b.row("Cart cache (cart-svc)")
    b.panel("Cart cache hit ratio (reads)", [(
        f'sum(rate(cart_cache_requests_total{{{sel}, op="get", result="hit"}}[{RI}])) / '
        f'sum(rate(cart_cache_requests_total{{{sel}, op="get"}}[{RI}]))', "hit ratio")], "percentunit", max_=1,
        description="Reads answered from Redis; misses, bypasses (breaker open) and errors go to Postgres.")
    b.panel("Cart cache operations", [(
        f"sum by (op, result) (rate(cart_cache_requests_total{{{sel}}}[{RI}]))", "{{op}} {{result}}")], "ops")
    b.panel("Cache breaker open", [(f"cart_cache_breaker_open{{{sel}}}", "{{instance}}")], "short", max_=1,
            thresholds=[("green", None), ("red", 1)])


def sessions(b: Board, inst: str = "") -> None:
    sel = f'job="session-svc"{inst}'
    b.row("Sessions (session-svc)")
    b.panel("Sessions created", [(f"sum by (kind) (rate(sessions_created_total{{{sel}}}[{RI}]))", "{{kind}}")], "ops")
    b.panel("Session look-ups", [(f"sum by (result) (rate(session_touches_total{{{sel}}}[{RI}]))", "{{result}}")], "ops")
    b.panel("Sessions revoked and rotated", [
        (f"sum(rate(sessions_revoked_total{{{sel}}}[{RI}]))", "revoked (logout)"),
        (f"sum(rate(sessions_rotated_total{{{sel}}}[{RI}]))", "rotated (guest -> user at login)"),
    ], "ops")
    b.panel("Session look-up miss ratio", [(
        f'sum(rate(session_touches_total{{{sel}, result="missing"}}[{RI}])) / '
        f"sum(rate(session_touches_total{{{sel}}}[{RI}]))", "missing")], "percentunit", max_=1,
        description="Look-ups of a session that is expired, revoked or unknown: a rise after a deploy or a Redis "
                    "flush means sessions were lost; a steady share is clients holding old tokens.")


def gateway(b: Board, inst: str = "", full: bool = True) -> None:
    sel = f'job="gateway"{inst}'
    b.row("Upstream calls (gateway)")
    b.panel("Upstream p99 by upstream", [(
        f"histogram_quantile(0.99, sum by (le, upstream) (rate(gateway_upstream_request_duration_seconds_bucket{{{sel}}}[{RI}])))",
        "{{upstream}}")], "s", thresholds=[("green", None), ("red", 0.15)],
        description="From sending a call until its response headers (or failure), retries counted separately.")
    b.panel("Upstream calls by outcome", [(
        f"sum by (upstream, outcome) (rate(gateway_upstream_requests_total{{{sel}}}[{RI}]))",
        "{{upstream}} {{outcome}}")], "reqps",
        description="answered = the upstream sent a response (any status); connect_error, timeout, error = it did not.")
    b.panel("In flight per instance vs limit", [(
        f"max by (upstream) (gateway_upstream_in_flight{{{sel}}})", "{{upstream}} (busiest instance)")], "short",
        thresholds=[("green", None), ("orange", UPSTREAM_MAX_IN_FLIGHT * 0.7), ("red", UPSTREAM_MAX_IN_FLIGHT * 0.9)],
        description=f"Calls in flight to each upstream on the busiest gateway instance. The line is the default "
                    f"UPSTREAM_MAX_IN_FLIGHT ({UPSTREAM_MAX_IN_FLIGHT}) scaled by priority share: low-priority calls "
                    f"are shed above 70 %, normal above 90 %, critical at 100 %. Edit if the limit is configured otherwise.")
    b.panel("Shed by priority", [(
        f"sum by (upstream, priority, reason) (rate(gateway_upstream_shed_total{{{sel}}}[{RI}]))",
        "{{upstream}} {{priority}} {{reason}}")], "reqps", needs=["gateway_upstream_shed_total"],
        description="Calls answered 503 without reaching the upstream: full (no slot within the wait) or breaker_open.")
    b.panel("Retries", [(
        f"sum by (upstream, result) (rate(gateway_upstream_retries_total{{{sel}}}[{RI}]))",
        "{{upstream}} {{result}}")], "reqps", needs=["gateway_upstream_retries_total"],
        description="sent, or denied_by_budget when the retry budget is spent.")
    b.panel("Circuit breaker open", [(
        f"max by (upstream) (gateway_upstream_breaker_open{{{sel}}})", "{{upstream}}")], "short", max_=1,
        thresholds=[("green", None), ("red", 1)], description="1 while any gateway instance fails fast to that upstream.")
    if not full or not have("gateway_rate_limited_total", "gateway_rate_limit_fallback_total"):
        return
    b.row("Rate limits (gateway)")
    b.panel("Rate-limited (429) by policy", [(
        f"sum by (policy) (rate(gateway_rate_limited_total{{{sel}}}[{RI}]))", "{{policy}}")], "reqps",
        needs=["gateway_rate_limited_total"])
    b.panel("Rate limits decided in process (Redis down)", [(
        f"sum by (policy) (rate(gateway_rate_limit_fallback_total{{{sel}}}[{RI}]))", "{{policy}}")], "ops",
        needs=["gateway_rate_limit_fallback_total"],
        description="Checks Redis did not answer: each instance then limits on its own, so the effective limit multiplies.")


def auth(b: Board, inst: str = "") -> None:
    sel = f'job="auth-svc"{inst}'
    b.row("Passwords and logins (auth-svc)")
    b.panel("Logins by result", [(
        f"sum by (result) (rate(auth_logins_total{{{sel}}}[{RI}]))", "{{result}}")], "ops",
        needs=["auth_logins_total"], description="ok, failed (wrong email or password), throttled, shed (hashing saturated).")
    b.panel("Registrations and refreshes by result", [
        (f"sum by (result) (rate(auth_registrations_total{{{sel}}}[{RI}]))", "register {{result}}"),
        (f"sum by (result) (rate(auth_refreshes_total{{{sel}}}[{RI}]))", "refresh {{result}}"),
    ], "ops", needs=["auth_registrations_total", "auth_refreshes_total"])
    b.panel("Password hash duration", [
        (f"histogram_quantile(0.5, sum by (le) (rate(auth_password_hash_duration_seconds_bucket{{{sel}}}[{RI}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(auth_password_hash_duration_seconds_bucket{{{sel}}}[{RI}])))", "p99"),
    ], "s", description="One argon2id hash or verify, without the wait for a thread.")
    b.panel("Password hashing saturation", [
        (f"sum by (instance) (auth_password_hash_in_flight{{{sel}}})", "hashing {{instance}}"),
        (f"sum by (instance) (auth_password_hash_waiting{{{sel}}})", "waiting {{instance}}"),
    ], "short", description="At most AUTH_HASH_CONCURRENCY (CPU count by default) hash at once and "
                            "AUTH_HASH_MAX_WAITING (4 x CPUs) wait; beyond that logins and registrations are shed (503). "
                            "A steady queue means the service needs more CPU.")


def merges(b: Board, inst: str = "") -> None:
    if not have("cart_merges_total", "cart_merged_lines_total"):
        return
    sel = f'job="cart-svc"{inst}'
    b.row("Login merges (cart-svc)")
    b.panel("Merges by result", [(
        f"sum by (result) (rate(cart_merges_total{{{sel}}}[{RI}]))", "{{result}}")], "ops",
        description="nothing (no guest cart), adopted (the user had none), merged (lines combined).")
    b.panel("Merged guest lines by outcome", [(
        f"sum by (outcome) (rate(cart_merged_lines_total{{{sel}}}[{RI}]))", "{{outcome}}")], "ops",
        description="dropped or capped lines hit the cart's limits: customers lose items they chose as guests.")


def pools(b: Board, jobs: str, inst: str = "") -> None:
    """Saturation of the datastore pools: what runs out first under a spike."""
    sel = f'job=~"{jobs}"{inst}'
    b.row("Datastore pools")
    b.panel("Postgres connections in use / max", [
        (f'sum by (job) (db_pool_connections{{{sel}, state="in_use"}})', "{{job}} in use"),
        (f"sum by (job) (db_pool_max_connections{{{sel}}})", "{{job}} max"),
    ], "short", description="In use near max means requests queue for a connection (see the wait).")
    b.panel("Postgres connection wait p99 and timeouts", [
        (f"histogram_quantile(0.99, sum by (le, job) (rate(db_pool_acquire_wait_seconds_bucket{{{sel}}}[{RI}])))", "{{job}} wait p99"),
        (f"sum by (job) (rate(db_pool_acquire_timeouts_total{{{sel}}}[{RI}]))", "{{job}} timeouts/s"),
    ], "s", description="Timeouts are answered 503 + Retry-After (cart-svc).")
    b.panel("Redis connections in use", [
        (f'sum by (job) (redis_pool_connections{{{sel}, state="in_use"}})', "{{job}} in use"),
    ], "short")
    b.panel("Redis calls by result", [
        (f"sum by (job, result) (rate(redis_calls_total{{{sel}}}[{RI}]))", "{{job}} {{result}}"),
    ], "ops", description="error and timeout: sessions answer 503; the cart cache falls back to Postgres.")


def cart_ops(b: Board, inst: str = "") -> None:
    sel = f'job="cart-svc"{inst}'
    b.row("Retries and offline sync (cart-svc)")
    b.panel("Idempotent replays", [(f"sum(rate(cart_idempotent_replays_total{{{sel}}}[{RI}]))", "replays")], "ops",
            description="Requests answered with the stored outcome of their Idempotency-Key: clients retrying.")
    b.panel("Offline ops by status", [(f"sum by (status) (rate(cart_offline_ops_total{{{sel}}}[{RI}]))", "{{status}}")], "ops",
            description="duplicate = a replayed op id (harmless); conflict/rejected = changes not applied, reported to the client.")


def cleanup(b: Board, inst: str = "", full: bool = False) -> None:
    sel = f'job="cleanup-worker"{inst}'
    b.row("Cleanup (cleanup-worker)")
    b.panel("Oldest expired row waiting", [(f"max by (kind) (cleanup_oldest_expired_age_seconds{{{sel}}})", "{{kind}}")],
            "s", thresholds=[("green", None), ("orange", 7200)], description="CleanupExpiredBacklogOld: above 2 h for 15 min.")
    b.panel("Rows deleted", [(f"sum by (kind) (rate(cleanup_rows_deleted_total{{{sel}}}[{RI}]))", "{{kind}}")], "rowsps")
    b.panel("Since the last completed pass", [(f"time() - max(cleanup_last_pass_completed_timestamp_seconds{{{sel}}})", "since last pass")],
            "s", kind="stat", thresholds=[("green", None), ("orange", 3600)])
    if not full:
        return
    b.panel("Rows that would be deleted (dry run)", [(f"sum by (kind) (rate(cleanup_rows_would_delete_total{{{sel}}}[{RI}]))", "{{kind}}")], "rowsps")
    b.panel("Batches", [(f"sum by (kind) (rate(cleanup_batches_total{{{sel}}}[{RI}]))", "{{kind}}")], "ops")
    b.panel("Batch duration p99", [(
        f"histogram_quantile(0.99, sum by (le, kind) (rate(cleanup_batch_duration_seconds_bucket{{{sel}}}[{RI}])))", "{{kind}}")], "s")
    b.panel("Passes by result", [(f"sum by (result) (rate(cleanup_passes_total{{{sel}}}[{RI}]))", "{{result}}")], "ops")
    b.panel("Cleanup lock held", [(f"cleanup_lock_held{{{sel}}}", "{{instance}}")], "short", max_=1)


def overview() -> None:
    b = Board()
    b.row("Services")
    b.panel("Request rate by service", [(
        f'sum by (job) (rate(http_server_request_duration_seconds_count{{job=~"{ALL_JOBS}", {NOT_OPS}}}[{RI}]))', "{{job}}")], "reqps")
    b.panel("5xx ratio by service", [(
        f'sum by (job) (rate(http_server_request_duration_seconds_count{{job=~"{ALL_JOBS}", {NOT_OPS}, http_response_status_code=~"5.."}}[{RI}])) / '
        f'sum by (job) (rate(http_server_request_duration_seconds_count{{job=~"{ALL_JOBS}", {NOT_OPS}}}[{RI}]))', "{{job}}")],
        "percentunit", thresholds=[("green", None), ("red", 0.001)])
    b.panel("Gateway API responses by status", [(
        f'sum by (http_response_status_code) (rate(http_server_request_duration_seconds_count{{job="gateway", {API}}}[{RI}]))',
        "{{http_response_status_code}}")], "reqps", description="503 = shed or refused for lack of capacity; 429 = rate-limited.")
    b.row("Gateway latency (API routes)")
    b.panel("p50 by route", [(
        f'histogram_quantile(0.5, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{{job="gateway", {API}}}[{RI}])))',
        "{{http_route}}")], "s")
    b.panel("p99 by route", [(
        f'histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{{job="gateway", {API}}}[{RI}])))',
        "{{http_route}}")], "s", thresholds=[("green", None), ("red", 0.15)], description="Goal: p99 < 150 ms (NFR1).")
    b.panel("Requests answered in 150 ms", [(
        f'sum(rate(http_server_request_duration_seconds_bucket{{job="gateway", {API}, http_response_status_code!~"5..", le="0.15"}}[{RI}])) / '
        f'sum(rate(http_server_request_duration_seconds_count{{job="gateway", {API}, http_response_status_code!~"5.."}}[{RI}]))',
        "in 150 ms")], "percentunit", thresholds=[("red", None), ("green", 0.99)], max_=1)
    slo(b)
    gateway(b, full=False)
    process(b, ALL_JOBS)
    b.panel("Cart cache breaker open", [('cart_cache_breaker_open{job="cart-svc"}', "{{instance}}")], "short", width=6, max_=1)
    cache(b)
    sessions(b)
    auth(b)
    merges(b)
    cart_ops(b)
    pools(b, "auth-svc|session-svc|cart-svc|cleanup-worker")
    cleanup(b)
    b.dump("cart-platform-overview", "cart-platform: overview",
           "Health at a glance: traffic, errors, latency, SLO burn, upstreams, saturation, cache, sessions, "
           "logins, cleanup.")


def per_service(job: str) -> None:
    b = Board()
    inst = ', instance=~"$instance"'
    red(b, job, inst)
    if job == "gateway":
        slo(b)
        gateway(b, inst)
    if job == "auth-svc":
        auth(b, inst)
    if job == "cart-svc":
        cache(b, inst)
        merges(b, inst)
        cart_ops(b, inst)
    if job == "session-svc":
        sessions(b, inst)
    if job == "cleanup-worker":
        cleanup(b, inst, full=True)
    if job != "gateway":
        pools(b, job, inst)
    process(b, job, inst)
    b.dump(f"cart-platform-{job}", f"cart-platform: {job}", f"{job}: requests, latency, its own metrics, process.", job)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    overview()
    for s in SERVICES:
        per_service(s)
    print(f"wrote {len(SERVICES) + 1} dashboards to {OUT}")
    if SKIPPED:
        print("left out panels reading names not in metrics.txt:", ", ".join(sorted(SKIPPED)))
