//! `--fail-if` conditions: `p99>150ms`, `errors>0.1%`, `p99[cart_read]>100ms`,
//! `shed_p99>50ms`, `recovery>5s`, `lost>0`. Any condition that holds makes the run fail
//! (exit code 1), so a CI job or a capacity search can act on a run's result.

use serde::Serialize;

use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// A latency quantile (0.5, 0.99, 0.999, 1.0 = max) of admitted requests, in ms.
    Latency(f64),
    Mean,
    /// A latency quantile of shed answers (429/503), in ms.
    ShedLatency(f64),
    /// Share of requests that failed (not 2xx, not 412, not shed), percent.
    Errors,
    /// Share of requests shed with 429 or 503, percent.
    Shed,
    /// Successful requests per second.
    Rps,
    /// Arrivals the generator itself could not send (its in-flight cap), count.
    Dropped,
    /// Seconds after the spike until the p99 is back to its level before it.
    Recovery,
    /// Acknowledged cart changes missing from Postgres afterwards (units), count.
    Lost,
    /// Journey checks that failed (an offline replay that applied twice...), count.
    Checks,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    pub text: String,
    pub metric: Metric,
    /// A request kind (`cart_read`...), or every request.
    pub kind: Option<String>,
    pub op: Op,
    /// In the metric's unit: ms, percent, per second, seconds, count.
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub condition: String,
    /// What was measured, in the condition's unit; null when it could not be measured
    /// (then the condition counts as met: a missing figure must not pass silently).
    pub measured: Option<f64>,
    pub failed: bool,
}

pub fn parse(text: &str) -> Result<Threshold, String> {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let (pos, op, len) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)]
        .iter()
        .find_map(|(s, op)| t.find(s).map(|p| (p, *op, s.len())))
        .ok_or_else(|| format!("{text:?}: expected METRIC>VALUE, e.g. p99>150ms"))?;
    let (lhs, rhs) = (&t[..pos], &t[pos + len..]);
    let (name, kind) = match lhs.split_once('[') {
        Some((n, rest)) => {
            let k = rest
                .strip_suffix(']')
                .filter(|k| !k.is_empty())
                .ok_or_else(|| format!("{text:?}: a kind is written p99[cart_read]"))?;
            (n, Some(k.to_owned()))
        }
        None => (lhs, None),
    };
    let quantile = |s: &str| -> Option<f64> {
        let digits = s.strip_prefix('p')?;
        let q: f64 = digits.parse().ok()?;
        (q > 0.0 && q < 100.0).then_some(q / 100.0)
    };
    let metric = match name {
        "max" => Metric::Latency(1.0),
        "mean" => Metric::Mean,
        "errors" => Metric::Errors,
        "shed" => Metric::Shed,
        "rps" => Metric::Rps,
        "dropped" => Metric::Dropped,
        "recovery" => Metric::Recovery,
        "lost" => Metric::Lost,
        "checks" => Metric::Checks,
        "shed_max" => Metric::ShedLatency(1.0),
        n => {
            if let Some(q) = n.strip_prefix("shed_").and_then(quantile) {
                Metric::ShedLatency(q)
            } else if let Some(q) = quantile(n) {
                Metric::Latency(q)
            } else {
                return Err(format!(
                    "{text:?}: unknown metric {n:?} (p50, p90, p99, p99.9, max, mean, shed_p99, \
                     errors, shed, rps, dropped, recovery, lost, checks)"
                ));
            }
        }
    };
    let value = parse_value(metric, rhs).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(Threshold {
        text: text.to_owned(),
        metric,
        kind,
        op,
        value,
    })
}

fn parse_value(metric: Metric, s: &str) -> Result<f64, String> {
    let number = |n: &str| -> Result<f64, String> {
        n.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{s:?} is not a non-negative number"))
    };
    match metric {
        Metric::Latency(_) | Metric::Mean | Metric::ShedLatency(_) => {
            if let Some(n) = s.strip_suffix("ms") {
                number(n)
            } else if let Some(n) = s.strip_suffix("us") {
                Ok(number(n)? / 1000.0)
            } else if let Some(n) = s.strip_suffix('s') {
                Ok(number(n)? * 1000.0)
            } else {
                Err("a latency needs a unit: ms, s or us".into())
            }
        }
        Metric::Errors | Metric::Shed => s
            .strip_suffix('%')
            .ok_or_else(|| "a share is written in percent, e.g. 0.1%".to_owned())
            .and_then(number),
        Metric::Recovery => number(s.strip_suffix('s').unwrap_or(s)),
        Metric::Rps | Metric::Dropped | Metric::Lost | Metric::Checks => number(s),
    }
}

impl Threshold {
    pub fn check(&self, summary: &Summary) -> Verdict {
        let measured = summary.measure(self.metric, self.kind.as_deref());
        let failed = match measured {
            None => true,
            Some(m) => match self.op {
                Op::Gt => m > self.value,
                Op::Ge => m >= self.value,
                Op::Lt => m < self.value,
                Op::Le => m <= self.value,
            },
        };
        Verdict {
            condition: self.text.clone(),
            measured,
            failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let t = parse("p99>150ms").expect("valid");
        assert_eq!(t.metric, Metric::Latency(0.99));
        assert_eq!((t.op, t.value, t.kind.as_deref()), (Op::Gt, 150.0, None));
        let t = parse("p99.9[cart_read] >= 1s").expect("valid");
        assert!(matches!(t.metric, Metric::Latency(q) if (q - 0.999).abs() < 1e-9));
        assert_eq!((t.op, t.value), (Op::Ge, 1000.0));
        assert_eq!(t.kind.as_deref(), Some("cart_read"));
        assert_eq!(parse("errors>0.1%").expect("valid").value, 0.1);
        assert_eq!(
            parse("shed_p99>50ms").expect("valid").metric,
            Metric::ShedLatency(0.99)
        );
        assert_eq!(parse("recovery>5s").expect("valid").value, 5.0);
        assert_eq!(parse("lost>0").expect("valid").metric, Metric::Lost);
        assert_eq!(parse("rps<10000").expect("valid").op, Op::Lt);
    }

    #[test]
    fn rejects_what_it_cannot_mean() {
        for bad in [
            "p99",
            "p99>150",
            "p100>1ms",
            "errors>0.1",
            "latency>1ms",
            "p99[]>1ms",
            "p99>-1ms",
            "p99>NaNms",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
