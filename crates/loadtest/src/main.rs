//! `loadtest`: drives the public API of a gateway with shopper journeys on an open-loop
//! schedule, and reports what shoppers saw. See README "Load testing".

mod hold;
mod pool;
mod profile;
mod report;
mod run;
mod seed;
mod stats;
mod threshold;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::profile::Profile;
use crate::run::Mix;
use crate::stats::{Cpu, Meta};

#[derive(Parser)]
#[command(
    version,
    about = "Open-loop load generator for the cart platform's public API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create users with carts, sessions and tokens in bulk (no argon2 per user).
    Seed(seed::SeedArgs),
    /// Offer a load profile and report latency, throughput and errors.
    Run(Box<RunArgs>),
    /// Open and hold many idle keep-alive connections.
    Hold(hold::HoldArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileName {
    Steady,
    Ramp,
    Spike,
    Soak,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    #[arg(long, value_enum, default_value = "steady")]
    profile: ProfileName,
    /// Requests per second (steady, soak; the base rate of a spike; ramp's end).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds (steady, ramp, soak). Soak defaults to 1800.
    #[arg(long)]
    duration: Option<f64>,
    /// Ramp: requests per second at the start.
    #[arg(long, default_value_t = 0.0)]
    ramp_from: f64,
    /// Spike: the rate during the spike is rate × factor.
    #[arg(long, default_value_t = 5.0)]
    spike_factor: f64,
    /// Spike: seconds at the base rate before the spike.
    #[arg(long, default_value_t = 20.0)]
    spike_before: f64,
    /// Spike: seconds the spike lasts.
    #[arg(long, default_value_t = 60.0)]
    spike_for: f64,
    /// Spike: seconds at the base rate after it.
    #[arg(long, default_value_t = 20.0)]
    spike_after: f64,
    /// Seconds at the starting rate before measuring (connections, caches, JIT-free but
    /// pools still fill).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, value_enum, default_value = "standard")]
    mix: Mix,
    /// Seeded users (loadtest seed). Without one, only guests shop.
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Mean think time between a journey's steps, in ms (uniform ±50 %).
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    /// Share of reads, adds and updates made by guests once the run has some.
    #[arg(long, default_value_t = 0.5)]
    guest_share: f64,
    /// Per-request timeout, ms (counted as a failure).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Most scenarios in flight at once; arrivals beyond it are counted as dropped (the
    /// generator, not the platform, is then the limit).
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Source addresses, round robin (e.g. 127.0.0.1-127.0.0.8).
    #[arg(long)]
    source_ips: Option<String>,
    /// Fail (exit 1) if a condition holds, e.g. `p99>150ms`, `errors>0.1%`,
    /// `p99[cart_read]>100ms`, `shed_p99>50ms`, `recovery>5s`, `lost>0`. Repeatable.
    #[arg(long = "fail-if")]
    fail_if: Vec<String>,
    /// Check afterwards that every acknowledged add is in Postgres (cart.cart_items).
    #[arg(long)]
    verify_database_url: Option<String>,
    /// Directory for summary.json and report.html.
    #[arg(long, default_value = "target/loadtest/latest")]
    report_dir: PathBuf,
    /// Threads of the generator (default: 1, or 2 when the peak rate is above 1,500/s).
    #[arg(long)]
    threads: Option<usize>,
}

/// Prints one line to stdout (the tool's output, unlike services' logs).
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread is cheapest per request; past ~1,500 req/s it can no longer keep to
    // the schedule on a shared machine (it shows as send lag), so rates above get two.
    let threads = match &cli.command {
        Command::Run(r) => r.threads.or_else(|| {
            let peak = match r.profile {
                ProfileName::Spike => r.rate * r.spike_factor,
                _ => r.rate,
            };
            Some(if peak > 1500.0 { 2 } else { 1 })
        }),
        _ => None,
    };
    // One thread by default: a load generator sharing the machine with what it measures
    // should cost as little as it can, and on one thread no CPU time goes to waking
    // other threads (with two, a third of it did). More threads for rates one cannot carry.
    let mut rt = match threads.unwrap_or(1) {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Seed(a) => seed::seed(a).await.map(|()| true),
            Command::Run(a) => run_command(*a).await,
            Command::Hold(a) => hold::hold(a).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn profile_of(a: &RunArgs) -> anyhow::Result<Profile> {
    let positive = |name: &str, v: f64| -> anyhow::Result<f64> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            anyhow::bail!("--{name} must be a positive number")
        }
    };
    let rate = positive("rate", a.rate)?;
    Ok(match a.profile {
        ProfileName::Steady => Profile::Steady {
            rate,
            duration: positive("duration", a.duration.unwrap_or(60.0))?,
        },
        ProfileName::Soak => Profile::Soak {
            rate,
            duration: positive("duration", a.duration.unwrap_or(1800.0))?,
        },
        ProfileName::Ramp => Profile::Ramp {
            from: if a.ramp_from.is_finite() && a.ramp_from >= 0.0 {
                a.ramp_from
            } else {
                anyhow::bail!("--ramp-from must be ≥ 0")
            },
            to: rate,
            duration: positive("duration", a.duration.unwrap_or(60.0))?,
        },
        ProfileName::Spike => Profile::Spike {
            rate,
            factor: positive("spike-factor", a.spike_factor)?,
            before: positive("spike-before", a.spike_before)?,
            during: positive("spike-for", a.spike_for)?,
            after: positive("spike-after", a.spike_after)?,
        },
    })
}

async fn run_command(a: RunArgs) -> anyhow::Result<bool> {
    let thresholds = a
        .fail_if
        .iter()
        .map(|t| threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--fail-if {e}"))?;
    let profile = profile_of(&a)?;
    if !(0.0..=1.0).contains(&a.guest_share) {
        anyhow::bail!("--guest-share must be within 0..=1");
    }
    let source_ips = match &a.source_ips {
        Some(s) => hold::parse_ips(s)?,
        None => Vec::new(),
    };
    let users = match &a.pool {
        Some(p) => pool::Users::load(p)?,
        None => pool::Users::empty(),
    };
    let opts = run::Options {
        target: a.target.clone(),
        source_ips: source_ips.clone(),
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        think: Duration::from_millis(a.think_ms),
        max_in_flight: a.max_in_flight.max(1),
        guest_share: a.guest_share,
        warmup: Duration::from_secs_f64(a.warmup.max(0.0)),
    };
    let pool_users = users.len();
    let ctx = Arc::new(run::Ctx::new(&opts, users)?);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cpu0 = run::own_cpu_secs();
    run::drive(ctx.clone(), &profile, a.mix, &opts).await;
    let cpu = run::own_cpu_secs().zip(cpu0).map(|(b, a)| b - a);

    let mut summary = ctx.rec.summarize(Meta {
        tool: format!("loadtest {}", env!("CARGO_PKG_VERSION")),
        started_at,
        target: a.target.clone(),
        workload: format!("{:?}", a.mix).to_lowercase(),
        phases: profile.phases(),
        measured_secs: profile.duration(),
        profile,
        warmup_secs: opts.warmup.as_secs_f64(),
        source_addresses: source_ips.iter().map(ToString::to_string).collect(),
        pool_users,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    });
    if let Some(c) = cpu {
        // The CPU was spent on every request, warm-up included.
        let n = summary.requests_with_warmup;
        summary.cpu = Some(Cpu {
            generator_cpu_secs: c,
            generator_us_per_request: (n > 0).then(|| c * 1e6 / n as f64),
        });
    }
    if let Some(p) = &a.pool {
        ctx.users.save(p)?;
    }
    if let Some(url) = &a.verify_database_url {
        summary.audit = Some(ctx.verify(url).await?);
    }
    summary.verdicts = thresholds.iter().map(|t| t.check(&summary)).collect();
    let passed = summary.verdicts.iter().all(|v| !v.failed);

    std::fs::create_dir_all(&a.report_dir)?;
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(a.report_dir.join("summary.json"), &json)?;
    std::fs::write(a.report_dir.join("report.html"), report::html(&summary))?;
    print_table(&summary);
    say(&format!(
        "report: {}/report.html, {}/summary.json",
        a.report_dir.display(),
        a.report_dir.display()
    ));
    for v in &summary.verdicts {
        say(&format!(
            "{} {} (measured {})",
            if v.failed { "FAILED" } else { "passed" },
            v.condition,
            v.measured
                .map_or_else(|| "nothing".to_owned(), |m| format!("{m:.3}"))
        ));
    }
    Ok(passed)
}

fn print_table(s: &stats::Summary) {
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
    say(&format!(
        "{:<18} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "kind", "requests", "ok/s", "p50 ms", "p90", "p99", "p99.9", "max", "errors%", "shed%"
    ));
    let line = |name: &str, k: &stats::KindSummary| {
        let l = &k.latency_ms;
        say(&format!(
            "{:<18} {:>8} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8.3} {:>8.3}",
            name,
            k.requests,
            k.ok_per_second,
            f(l.p50),
            f(l.p90),
            f(l.p99),
            f(l.p999),
            f(l.max),
            k.error_percent,
            k.shed_percent
        ));
    };
    for (name, k) in &s.kinds {
        line(name, k);
    }
    line("all", &s.overall);
    let codes: Vec<String> = s
        .overall
        .by_status
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect();
    say(&format!(
        "answers: {}; dropped by the generator: {}; shed p99: {} ms; recovery: {} s; generator send lag p99: {} ms",
        codes.join(" "),
        s.dropped,
        f(s.overall.shed_latency_ms.p99),
        f(s.recovery_secs),
        f(s.generator_lag_ms.p99)
    ));
    if let Some(c) = &s.cpu {
        say(&format!(
            "generator CPU: {:.2} s, {} µs per request",
            c.generator_cpu_secs,
            f(c.generator_us_per_request)
        ));
    }
    if let Some(a) = &s.audit {
        say(&format!(
            "audit: {} lines, {} acknowledged units, {} uncertain, {} lost, {} excess",
            a.lines, a.acknowledged_units, a.uncertain_units, a.lost_units, a.excess_units
        ));
    }
    if !s.checks_failed.is_empty() {
        say(&format!("failed checks: {:?}", s.checks_failed));
    }
}
