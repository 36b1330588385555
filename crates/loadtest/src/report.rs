//! The HTML report: one self-contained file (charts drawn as inline SVG by this code,
//! no script, no CDN), readable offline and attachable to a ticket.

use std::fmt::Write;

use crate::stats::{KindSummary, SecondSummary, Summary};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.1}"))
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart: x = seconds, y from 0 to the largest value (or `y_cap`, values above
/// it drawn at the top edge so one outlier does not flatten the rest).
fn chart(
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    y_cap: Option<f64>,
    shade: &[(f64, f64)],
) -> String {
    let (w, h, l, r, t, b) = (900.0, 260.0, 60.0, 20.0, 30.0, 30.0);
    let xmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let mut ymax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    if let Some(cap) = y_cap {
        ymax = ymax.min(cap);
    }
    let ymax = nice(ymax.max(1e-9));
    let x = |v: f64| l + (w - l - r) * v / xmax;
    let y = |v: f64| t + (h - t - b) * (1.0 - v.min(ymax) / ymax);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"##,
        esc(title),
        esc(title)
    );
    for (a, z) in shade {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{t}" width="{:.1}" height="{:.1}" fill="#fde68a" opacity="0.5"/>"##,
            x(*a),
            (x(*z) - x(*a)).max(0.0),
            h - t - b
        );
    }
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} {}</text>"##,
            w - r,
            l - 4.0,
            yy + 4.0,
            short(v),
            esc(unit)
        );
    }
    for i in 0..=5 {
        let v = xmax * f64::from(i) / 5.0;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0} s</text>"##,
            x(v),
            h - 8.0,
            v
        );
    }
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(a, v)| format!("{:.1},{:.1}", x(*a), y(*v)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/><text x="{:.1}" y="16" font-size="12" fill="{}">■ {}</text>"##,
            se.color,
            pts.join(" "),
            l + 150.0 * i as f64,
            se.color,
            esc(se.name)
        );
    }
    s.push_str("</svg></figure>");
    s
}

fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn row(name: &str, k: &KindSummary) -> String {
    let l = &k.latency_ms;
    let codes: Vec<String> = k
        .by_status
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    format!(
        "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{:.3} %</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        k.requests,
        k.ok_per_second,
        f(l.p50),
        f(l.p90),
        f(l.p99),
        f(l.p999),
        f(l.max),
        f(l.mean),
        k.error_percent,
        k.shed_percent,
        f(k.shed_latency_ms.p99),
        esc(&codes.join(", "))
    )
}

pub fn html(s: &Summary) -> String {
    let m = &s.meta;
    let tl: &[SecondSummary] = &s.timeline;
    let pts = |g: &dyn Fn(&SecondSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        tl.iter().filter_map(|x| g(x).map(|v| (x.t, v))).collect()
    };
    let shade: Vec<(f64, f64)> = m
        .phases
        .iter()
        .filter(|p| p.name == "spike")
        .map(|p| (p.start + m.warmup_secs, p.end + m.warmup_secs))
        .collect();
    let throughput = chart(
        "Requests per second, by the second they were due",
        "/s",
        &[
            Series {
                name: "offered",
                color: "#9ca3af",
                points: pts(&|x| Some(x.offered as f64)),
            },
            Series {
                name: "ok",
                color: "#16a34a",
                points: pts(&|x| Some(x.ok as f64)),
            },
            Series {
                name: "shed (429/503)",
                color: "#d97706",
                points: pts(&|x| Some(x.shed as f64)),
            },
            Series {
                name: "failed",
                color: "#dc2626",
                points: pts(&|x| Some(x.failed as f64)),
            },
        ],
        None,
        &shade,
    );
    let cap = s.overall.latency_ms.p999.map(|p| p * 1.2);
    let latency = chart(
        "Latency of admitted requests per second (from the moment each was due)",
        "ms",
        &[
            Series {
                name: "p50",
                color: "#2563eb",
                points: pts(&|x| x.p50_ms),
            },
            Series {
                name: "p99",
                color: "#7c3aed",
                points: pts(&|x| x.p99_ms),
            },
            Series {
                name: "max",
                color: "#db2777",
                points: pts(&|x| x.max_ms),
            },
        ],
        cap,
        &shade,
    );
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>loadtest {target}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;max-width:1100px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child,th:first-child{{text-align:left}}.fail{{color:#b91c1c;font-weight:bold}}.pass{{color:#15803d}}figure{{margin:12px 0}}figcaption{{font-weight:bold}}code{{background:#f3f4f6;padding:1px 4px}}</style></head><body>
<h1>Load test of {target}</h1>
<p>Started {started}; workload <b>{workload}</b>; profile <code>{profile}</code>; measured {secs:.0} s after a {warm:.0} s warm-up; {users} seeded users; source addresses {ips}.</p>
<p><code>{cmd}</code></p>"#,
        target = esc(&m.target),
        started = esc(&m.started_at),
        workload = esc(&m.workload),
        profile = esc(&serde_json::to_string(&m.profile).unwrap_or_default()),
        secs = m.measured_secs,
        warm = m.warmup_secs,
        users = m.pool_users,
        ips = esc(&m.source_addresses.join(", ")),
        cmd = esc(&m.command),
    );
    if !s.verdicts.is_empty() {
        out.push_str("<h2>Thresholds</h2><ul>");
        for v in &s.verdicts {
            let _ = write!(
                out,
                r#"<li class="{}">{} — measured {} → {}</li>"#,
                if v.failed { "fail" } else { "pass" },
                esc(&v.condition),
                f(v.measured),
                if v.failed { "FAILED" } else { "ok" }
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("<h2>By request kind</h2><table><tr><th>kind</th><th>requests</th><th>ok/s</th><th>p50 ms</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th><th>errors</th><th>shed</th><th>shed p99 ms</th><th>answers</th></tr>");
    for (name, k) in &s.kinds {
        out.push_str(&row(name, k));
    }
    out.push_str(&row("all", &s.overall));
    out.push_str("</table>");
    let _ = write!(
        out,
        "<p>Generator drops (its own in-flight cap): {}. Generator send lag (due → sent) p50/p99/max: {}/{}/{} ms. Failed journey checks: {}. Recovery after the spike: {} s.</p>",
        s.dropped,
        f(s.generator_lag_ms.p50),
        f(s.generator_lag_ms.p99),
        f(s.generator_lag_ms.max),
        if s.checks_failed.is_empty() {
            "none".to_owned()
        } else {
            esc(&format!("{:?}", s.checks_failed))
        },
        f(s.recovery_secs)
    );
    if let Some(a) = &s.audit {
        let _ = write!(
            out,
            "<p>Audit against Postgres: {} lines, {} acknowledged units, {} uncertain, <b>{} lost</b>, {} beyond acknowledged + uncertain.</p>",
            a.lines, a.acknowledged_units, a.uncertain_units, a.lost_units, a.excess_units
        );
    }
    if let Some(c) = &s.cpu {
        let _ = write!(
            out,
            "<p>Load generator CPU: {:.1} s ({} µs per request).</p>",
            c.generator_cpu_secs,
            f(c.generator_us_per_request)
        );
    }
    out.push_str(&throughput);
    out.push_str(&latency);
    out.push_str("<p>Answers: ok = 2xx and 412; shed = 429 and 503 (counted apart from failures); failed = every other status and transport errors. Latency counts from the moment a request was due, so a late send is not hidden (no coordinated omission).</p></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_tops() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(2400.0), 2500.0);
    }

    #[test]
    fn charts_escape_and_draw_every_series() {
        let c = chart(
            "a <b>",
            "ms",
            &[
                Series {
                    name: "p99",
                    color: "#000",
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                },
                Series {
                    name: "max",
                    color: "#111",
                    points: vec![(0.0, 3.0)],
                },
            ],
            None,
            &[(0.0, 1.0)],
        );
        assert!(c.contains("a &lt;b&gt;"));
        assert_eq!(c.matches("<polyline").count(), 2);
        assert!(c.contains("<rect"));
    }
}
