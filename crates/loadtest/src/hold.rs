//! `loadtest hold`: many open, idle keep-alive connections to the gateway, each one a
//! seeded shopper who loaded the cart once and is now looking at the page, as browsers
//! do between clicks. The concurrent-users scenario runs several of these (one process
//! holds at most ~20,000 sockets under the machine's open-file limit) next to a `run`
//! that makes a share of the shoppers active.
//!
//! Plain TCP rather than an HTTP client: the point is to own exactly one connection per
//! shopper, bound to a chosen source address (one loopback address has ~28,000
//! ephemeral ports; spreading over 127.0.0.x gets past that).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::pool::Users;

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// The gateway, as host:port (plain HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// The seeded users (loadtest seed); connection i acts as user offset + i.
    #[arg(long)]
    pub pool: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Source addresses, round robin: a list (127.0.0.1,127.0.0.2) or a range
    /// (127.0.0.1-127.0.0.8).
    #[arg(long, default_value = "127.0.0.1")]
    pub source_ips: String,
    /// New connections per second while opening (each sends one cart read).
    #[arg(long, default_value_t = 2000.0)]
    pub open_rate: f64,
    /// How long to hold them once open, in seconds (SIGTERM or Ctrl-C ends it earlier).
    #[arg(long, default_value_t = 60.0)]
    pub hold_secs: f64,
    /// Where to write the JSON result (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A file created once every connection has been tried (so a script can start the
    /// active load then).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct HoldResult {
    pub requested: usize,
    pub opened: u64,
    pub failed_to_open: u64,
    pub first_answers_not_200: u64,
    /// Connections the server closed while they were held.
    pub closed_by_server: u64,
    pub open_at_end: u64,
    pub open_seconds: f64,
    pub held_seconds: f64,
    pub first_request_p99_ms: Option<f64>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

pub fn parse_ips(s: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
                a.parse().with_context(|| format!("bad address {a}"))?,
                b.parse().with_context(|| format!("bad address {b}"))?,
            );
            let (lo, hi) = (u32::from(a), u32::from(b));
            if hi < lo || hi - lo > 1024 {
                bail!("bad range {part}");
            }
            out.extend((lo..=hi).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part}"))?,
            );
        }
    }
    Ok(out)
}

async fn open(
    target: SocketAddr,
    src: IpAddr,
    token: &str,
) -> Result<(TcpStream, u16), &'static str> {
    let sock = match src {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|_| "socket")?;
    sock.bind(SocketAddr::new(src, 0)).map_err(|_| "bind")?;
    let mut s = tokio::time::timeout(Duration::from_secs(10), sock.connect(target))
        .await
        .map_err(|_| "connect_timeout")?
        .map_err(|_| "connect")?;
    let req = format!(
        "GET /api/v1/cart HTTP/1.1\r\nHost: {target}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(|_| "write")?;
    let status = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .map_err(|_| "response_timeout")??;
    Ok((s, status))
}

/// Reads one response (status line, headers, Content-Length body); its status.
async fn read_response(s: &mut TcpStream) -> Result<u16, &'static str> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| "read")?;
        if n == 0 {
            return Err("closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > 64 * 1024 {
                return Err("header_too_large");
            }
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| "bad_header")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("bad_status")?;
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).await.map_err(|_| "read")?;
            if n == 0 {
                return Err("closed");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok(status);
    }
}

pub async fn hold(a: HoldArgs) -> anyhow::Result<()> {
    let users = Users::load(&a.pool)?;
    if users.len() == 0 {
        bail!("the pool {} is empty", a.pool.display());
    }
    let ips = parse_ips(&a.source_ips)?;
    if ips.is_empty() {
        bail!("--source-ips names no address");
    }
    let opened = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let mut result = HoldResult {
        requested: a.connections,
        ..HoldResult::default()
    };
    let mut lat = hdrhistogram::Histogram::<u64>::new(3)?;
    let t0 = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / a.open_rate.max(1.0));
    for i in 0..a.connections {
        let due = t0 + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Some(u) = users.get((a.offset + i) % users.len()) else {
            continue;
        };
        let (token, src, target) = (u.access(), ips[i % ips.len()], a.target);
        opening.spawn(async move {
            let r = open(target, src, &token).await;
            (r, due.elapsed())
        });
        // Keep the set small: collect what has finished.
        while let Some(done) = opening.try_join_next() {
            account(done, &mut result, &mut lat, &opened, &closed);
        }
    }
    while let Some(done) = opening.join_next().await {
        account(done, &mut result, &mut lat, &opened, &closed);
    }
    result.open_seconds = t0.elapsed().as_secs_f64();
    result.first_request_p99_ms =
        (!lat.is_empty()).then(|| lat.value_at_quantile(0.99) as f64 / 1000.0);
    if let Some(f) = &a.ready_file {
        std::fs::write(f, b"ready\n")?;
    }
    crate::say(&format!(
        "{{\"event\":\"ready\",\"opened\":{},\"failed\":{}}}",
        result.opened, result.failed_to_open
    ));
    let t1 = Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(a.hold_secs)) => {}
        _ = stop_signal() => {}
    }
    result.held_seconds = t1.elapsed().as_secs_f64();
    result.closed_by_server = closed.load(Ordering::Relaxed);
    result.open_at_end = opened.load(Ordering::Relaxed);
    let json = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &a.out {
        std::fs::write(out, &json)?;
    }
    crate::say(&json);
    // The held sockets close when the process exits.
    std::process::exit(0);
}

type Opened = (Result<(TcpStream, u16), &'static str>, Duration);

fn account(
    done: Result<Opened, tokio::task::JoinError>,
    result: &mut HoldResult,
    lat: &mut hdrhistogram::Histogram<u64>,
    opened: &Arc<AtomicU64>,
    closed: &Arc<AtomicU64>,
) {
    let (r, took) = match done {
        Ok(x) => x,
        Err(_) => {
            result.failed_to_open += 1;
            *result.errors.entry("task".into()).or_default() += 1;
            return;
        }
    };
    match r {
        Ok((stream, status)) => {
            let _ = lat.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
            if status != 200 {
                result.first_answers_not_200 += 1;
                *result.errors.entry(format!("status_{status}")).or_default() += 1;
            }
            result.opened += 1;
            opened.fetch_add(1, Ordering::Relaxed);
            let (opened, closed) = (opened.clone(), closed.clone());
            // Watch the idle connection: a read returns 0 when the server closes it.
            tokio::spawn(async move {
                let mut stream = stream;
                let mut b = [0u8; 64];
                let _ = stream.read(&mut b).await;
                opened.fetch_sub(1, Ordering::Relaxed);
                closed.fetch_add(1, Ordering::Relaxed);
            });
        }
        Err(e) => {
            result.failed_to_open += 1;
            *result.errors.entry(e.to_owned()).or_default() += 1;
        }
    }
}

pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_as_lists_and_ranges() {
        let ips = parse_ips("127.0.0.1-127.0.0.3, 10.0.0.1").expect("valid");
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2].to_string(), "127.0.0.3");
        assert!(parse_ips("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_ips("nope").is_err());
    }
}
