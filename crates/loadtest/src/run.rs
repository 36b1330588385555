//! The run: arrivals on the profile's schedule, each one a shopper scenario (a single
//! request in the standard mix, a journey of several with think times in the journeys
//! mix), against the public API of one gateway URL.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::Rng;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::pool::{Guest, Guests, User, Users};
use crate::profile::Profile;
use crate::stats::{Audit, Recorder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// One request per arrival: 60 % cart reads, 25 % adds, 8 % updates and removes,
    /// 5 % session starts and token refreshes, 2 % logins (half of them merging a guest
    /// cart).
    Standard,
    /// Whole shopper journeys with think times: guest browsing and adding, a guest
    /// logging in (merge), a user on two devices, an offline client replaying a batch,
    /// checkout preparation (reads and If-Match updates).
    Journeys,
    /// Only cart adds by seeded users (durable writes).
    Adds,
    /// Only cart reads.
    Reads,
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Read,
    Add,
    Update,
    SessionOrRefresh,
    Login,
    GuestBrowse,
    GuestLogin,
    TwoDevices,
    OfflineReplay,
    CheckoutPrep,
    UserAdd,
}

impl Mix {
    /// (scenario, weight, requests it sends).
    fn scenarios(self) -> &'static [(Scenario, u32, f64)] {
        match self {
            Mix::Standard => &[
                (Scenario::Read, 60, 1.0),
                (Scenario::Add, 25, 1.0),
                (Scenario::Update, 8, 1.0),
                (Scenario::SessionOrRefresh, 5, 1.0),
                (Scenario::Login, 2, 1.0),
            ],
            Mix::Journeys => &[
                (Scenario::GuestBrowse, 35, 8.0),
                (Scenario::GuestLogin, 15, 5.0),
                (Scenario::TwoDevices, 15, 7.0),
                (Scenario::OfflineReplay, 10, 3.0),
                (Scenario::CheckoutPrep, 25, 7.0),
            ],
            Mix::Adds => &[(Scenario::UserAdd, 1, 1.0)],
            Mix::Reads => &[(Scenario::Read, 1, 1.0)],
        }
    }

    pub fn requests_per_arrival(self) -> f64 {
        let s = self.scenarios();
        let w: u32 = s.iter().map(|x| x.1).sum();
        s.iter().map(|x| f64::from(x.1) * x.2).sum::<f64>() / f64::from(w.max(1))
    }

    fn pick(self) -> (Scenario, f64) {
        let s = self.scenarios();
        let total: u32 = s.iter().map(|x| x.1).sum();
        let mut r = rand::rng().random_range(0..total.max(1));
        for (sc, w, n) in s {
            if r < *w {
                return (*sc, *n);
            }
            r -= w;
        }
        (s[0].0, s[0].2)
    }
}

pub struct Options {
    pub target: String,
    pub source_ips: Vec<IpAddr>,
    pub timeout: Duration,
    pub think: Duration,
    pub max_in_flight: usize,
    /// Share of reads, adds and updates made by guests (when there are any yet).
    pub guest_share: f64,
    pub warmup: Duration,
}

pub struct Ctx {
    clients: Vec<reqwest::Client>,
    next_client: AtomicUsize,
    /// Parsed once: every request only swaps the path in.
    base: reqwest::Url,
    pub users: Users,
    guests: Guests,
    pub rec: Recorder,
    think: Duration,
    guest_share: f64,
    /// Product ids only this run's user adds touch, so their totals can be checked in
    /// Postgres afterwards whatever other runs did to the same carts.
    audit_prefix: String,
    /// (cart_id, product_id) → (acknowledged units, uncertain units).
    audit: Mutex<HashMap<(String, String), (u64, u64)>>,
}

pub struct Reply {
    pub status: u16,
    raw: bytes::Bytes,
    pub etag: Option<String>,
}

impl Reply {
    /// The body as JSON, parsed only by the steps that read it: most answers are only
    /// counted, and parsing every cart would make the generator the bottleneck sooner.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

enum Who<'a> {
    User(&'a User),
    Bearer(&'a str),
    Guest(&'a Guest),
}

impl Ctx {
    pub fn new(opts: &Options, users: Users) -> anyhow::Result<Self> {
        let ips: Vec<Option<IpAddr>> = if opts.source_ips.is_empty() {
            vec![None]
        } else {
            opts.source_ips.iter().copied().map(Some).collect()
        };
        let mut clients = Vec::new();
        for ip in ips {
            clients.push(
                reqwest::Client::builder()
                    .local_address(ip)
                    .timeout(opts.timeout)
                    .connect_timeout(opts.timeout)
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()?,
            );
        }
        let run_id: u32 = rand::rng().random_range(0..0xff_ffff);
        Ok(Self {
            clients,
            next_client: AtomicUsize::new(0),
            base: reqwest::Url::parse(&opts.target)
                .map_err(|e| anyhow::anyhow!("--target {}: {e}", opts.target))?,
            users,
            guests: Guests::new(200_000),
            rec: Recorder::new(Instant::now() + Duration::from_millis(200), opts.warmup),
            think: opts.think,
            guest_share: opts.guest_share,
            audit_prefix: format!("a{run_id:06x}-"),
            audit: Mutex::new(HashMap::new()),
        })
    }

    fn request(&self, method: Method, path: &str, who: Option<&Who<'_>>) -> RequestBuilder {
        let i = self.next_client.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut url = self.base.clone();
        url.set_path(path);
        let rb = self.clients[i].request(method, url);
        match who {
            Some(Who::User(u)) => rb.bearer_auth(u.access()),
            Some(Who::Bearer(t)) => rb.bearer_auth(t),
            Some(Who::Guest(g)) => rb.header("x-session-token", &g.session_token),
            None => rb,
        }
    }

    /// Sends one request and records its answer against `due`.
    async fn call(&self, kind: &'static str, due: Instant, rb: RequestBuilder) -> Option<Reply> {
        let label = |e: &reqwest::Error| {
            if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect_error"
            } else {
                "transport_error"
            }
        };
        let sent = Instant::now();
        match rb.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                let etag = res
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match res.bytes().await {
                    Ok(b) => {
                        self.rec.record(kind, due, sent, Some(status), "");
                        Some(Reply {
                            status,
                            raw: b,
                            etag,
                        })
                    }
                    Err(e) => {
                        self.rec.record(kind, due, sent, None, label(&e));
                        None
                    }
                }
            }
            Err(e) => {
                self.rec.record(kind, due, sent, None, label(&e));
                None
            }
        }
    }

    async fn think(&self) -> Instant {
        let ms = self.think.as_secs_f64() * 1000.0;
        if ms > 0.0 {
            let d = rand::rng().random_range(ms * 0.5..=ms * 1.5);
            tokio::time::sleep(Duration::from_secs_f64(d / 1000.0)).await;
        }
        Instant::now()
    }

    fn sku(&self) -> String {
        format!("sku-{}", rand::rng().random_range(0..20))
    }

    async fn start_session(&self, due: Instant) -> Option<Guest> {
        let r = self
            .call(
                "session_start",
                due,
                self.request(Method::POST, "/api/v1/sessions", None),
            )
            .await?;
        if r.status != 201 {
            return None;
        }
        Some(Guest {
            session_token: r.json()["session_token"].as_str()?.to_owned(),
        })
    }

    async fn read(&self, who: &Who<'_>, due: Instant) -> Option<Reply> {
        self.call(
            "cart_read",
            due,
            self.request(Method::GET, "/api/v1/cart", Some(who)),
        )
        .await
    }

    async fn add(&self, who: &Who<'_>, product: &str, qty: u32, due: Instant) -> Option<Reply> {
        let rb = self
            .request(Method::POST, "/api/v1/cart/items", Some(who))
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({ "product_id": product, "quantity": qty }));
        self.call("cart_add", due, rb).await
    }

    /// An add by a seeded user to one of this run's audit lines, remembered for the
    /// check against Postgres.
    async fn audited_add(&self, u: &User, due: Instant) {
        let product = format!("{}{}", self.audit_prefix, rand::rng().random_range(0..4u32));
        let reply = self.add(&Who::User(u), &product, 1, due).await;
        let (acked, uncertain) = match reply.as_ref().map(|r| r.status) {
            Some(200) => (1, 0),
            // Refused before anything was written: rate limit, validation, auth.
            Some(400..=499) => (0, 0),
            // A 503 may come from admission (nothing sent) or after cart-svc was
            // reached; a transport error may come after the write. Either is uncertain.
            _ => (0, 1),
        };
        let mut a = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        let e = a.entry((u.cart_id.clone(), product)).or_default();
        e.0 += acked;
        e.1 += uncertain;
    }

    async fn update(&self, who: &Who<'_>, due: Instant) {
        let sku = self.sku();
        if rand::rng().random_bool(0.5) {
            let q = rand::rng().random_range(1..=5u32);
            let rb = self
                .request(Method::PUT, &format!("/api/v1/cart/items/{sku}"), Some(who))
                .json(&json!({ "quantity": q }));
            self.call("cart_set", due, rb).await;
        } else {
            let rb = self.request(
                Method::DELETE,
                &format!("/api/v1/cart/items/{sku}"),
                Some(who),
            );
            self.call("cart_remove", due, rb).await;
        }
    }

    async fn refresh(&self, u: &User, due: Instant) {
        let rb = self
            .request(Method::POST, "/api/v1/auth/refresh", None)
            .json(&json!({ "refresh_token": u.refresh_token() }));
        if let Some(r) = self.call("refresh", due, rb).await {
            if r.status == 200 {
                let body = r.json();
                if let (Some(a), Some(f)) = (
                    body["access_token"].as_str(),
                    body["refresh_token"].as_str(),
                ) {
                    u.set_tokens(a.to_owned(), f.to_owned());
                }
            }
        }
    }

    async fn login(&self, u: &User, guest: Option<&Guest>, due: Instant) -> Option<String> {
        let rb = self
            .request(
                Method::POST,
                "/api/v1/auth/login",
                guest.map(Who::Guest).as_ref(),
            )
            .json(&json!({ "email": u.email, "password": u.password }));
        let r = self.call("login", due, rb).await?;
        if r.status != 200 {
            return None;
        }
        let body = r.json();
        if body["cart"]["cart_id"].as_str() != Some(u.cart_id.as_str()) {
            self.rec.check_failed("login_cart_is_the_users_cart");
        }
        body["access_token"].as_str().map(str::to_owned)
    }

    /// A shopper to act as: a guest of this run (guest_share of the time, once there are
    /// some) or a seeded user.
    fn pick_actor(&self) -> Option<Actor<'_>> {
        if rand::rng().random_bool(self.guest_share.clamp(0.0, 1.0)) {
            if let Some(g) = self.guests.random() {
                return Some(Actor::Guest(g));
            }
        }
        self.users
            .random()
            .map(Actor::User)
            .or_else(|| self.guests.random().map(Actor::Guest))
    }

    async fn scenario(&self, sc: Scenario, due: Instant) {
        match sc {
            Scenario::Read => match self.pick_actor() {
                Some(a) => {
                    self.read(&a.who(), due).await;
                }
                None => self.new_guest(due).await,
            },
            Scenario::Add => match self.pick_actor() {
                Some(Actor::User(u)) => self.audited_add(u, due).await,
                Some(Actor::Guest(g)) => {
                    self.add(&Who::Guest(&g), &self.sku(), 1, due).await;
                }
                None => self.new_guest(due).await,
            },
            Scenario::Update => match self.pick_actor() {
                Some(a) => self.update(&a.who(), due).await,
                None => self.new_guest(due).await,
            },
            Scenario::SessionOrRefresh => {
                let user = self.users.random().filter(|_| rand::rng().random_bool(0.5));
                match user {
                    Some(u) if u.try_begin_refresh() => {
                        self.refresh(u, due).await;
                        u.end_refresh();
                    }
                    _ => self.new_guest(due).await,
                }
            }
            Scenario::Login => match self.users.random() {
                Some(u) => {
                    let guest = self.guests.take_fresh();
                    self.login(u, guest.as_ref(), due).await;
                }
                None => self.new_guest(due).await,
            },
            Scenario::UserAdd => match self.users.random() {
                Some(u) => self.audited_add(u, due).await,
                None => self.new_guest(due).await,
            },
            Scenario::GuestBrowse => self.guest_browse(due).await,
            Scenario::GuestLogin => self.guest_login(due).await,
            Scenario::TwoDevices => self.two_devices(due).await,
            Scenario::OfflineReplay => self.offline_replay(due).await,
            Scenario::CheckoutPrep => self.checkout_prep(due).await,
        }
    }

    async fn new_guest(&self, due: Instant) {
        if let Some(g) = self.start_session(due).await {
            self.guests.add(g);
        }
    }

    async fn guest_browse(&self, due: Instant) {
        let Some(g) = self.start_session(due).await else {
            return;
        };
        let who = Who::Guest(&g);
        self.read(&who, Instant::now()).await;
        let t = self.think().await;
        self.add(&who, &self.sku(), 1, t).await;
        let t = self.think().await;
        self.add(&who, &self.sku(), 2, t).await;
        self.read(&who, Instant::now()).await;
        let t = self.think().await;
        self.update(&who, t).await;
        self.read(&who, Instant::now()).await;
        self.guests.add(g);
    }

    async fn guest_login(&self, due: Instant) {
        let Some(g) = self.start_session(due).await else {
            return;
        };
        let who = Who::Guest(&g);
        let t = self.think().await;
        self.add(&who, &self.sku(), 1, t).await;
        let t = self.think().await;
        self.add(&who, &self.sku(), 1, t).await;
        let Some(u) = self.users.random() else {
            return;
        };
        let t = self.think().await;
        if let Some(token) = self.login(u, Some(&g), t).await {
            self.read(&Who::Bearer(&token), Instant::now()).await;
        }
    }

    async fn two_devices(&self, due: Instant) {
        let Some(u) = self.users.random() else {
            return;
        };
        let a = Who::User(u);
        self.read(&a, due).await;
        let t = self.think().await;
        let Some(token) = self.login(u, None, t).await else {
            return;
        };
        let b = Who::Bearer(&token);
        let t = self.think().await;
        // Both devices add at the same moment; both adds must land (API.md: concurrent
        // adds are never lost).
        let sku = self.sku();
        let (ra, rb) = tokio::join!(self.add(&a, &sku, 1, t), self.add(&b, &sku, 1, t));
        let (ca, cb) = tokio::join!(self.read(&a, Instant::now()), self.read(&b, Instant::now()));
        if let (Some(ra), Some(rb), Some(ca), Some(cb)) = (ra, rb, ca, cb) {
            let same = ca.json()["cart_id"] == cb.json()["cart_id"];
            if ra.status == 200 && rb.status == 200 && !same {
                self.rec.check_failed("two_devices_same_cart");
            }
        }
    }

    async fn offline_replay(&self, due: Instant) {
        let Some(u) = self.users.random() else {
            return;
        };
        let who = Who::User(u);
        let Some(r) = self.read(&who, due).await else {
            return;
        };
        let base = r.json()["version"].as_u64().unwrap_or(0);
        let ops: Vec<Value> = (0..5)
            .map(|i| {
                let op_id = uuid::Uuid::new_v4().to_string();
                if i % 3 == 2 {
                    json!({"op_id": op_id, "type": "set", "product_id": self.sku(), "quantity": 2})
                } else {
                    json!({"op_id": op_id, "type": "add", "product_id": self.sku(), "quantity": 1})
                }
            })
            .collect();
        let body = json!({ "base_version": base, "ops": ops });
        let t = self.think().await;
        let send = |at| {
            let rb = self
                .request(Method::POST, "/api/v1/cart/ops", Some(&who))
                .json(&body);
            self.call("offline_ops", at, rb)
        };
        let first = send(t).await;
        // The client never saw the answer (it went offline again) and replays.
        let again = send(Instant::now()).await;
        if let (Some(f), Some(a)) = (first, again) {
            if f.status == 200 && a.status == 200 {
                let replayed_all = a.json()["results"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .all(|r| r["status"] == "duplicate" || r["status"] == "conflict")
                });
                if !replayed_all {
                    self.rec.check_failed("offline_replay_applied_twice");
                }
            }
        }
    }

    async fn checkout_prep(&self, due: Instant) {
        let Some(u) = self.users.random() else {
            return;
        };
        let who = Who::User(u);
        let Some(r) = self.read(&who, due).await else {
            return;
        };
        let mut etag = r.etag;
        for _ in 0..3 {
            let t = self.think().await;
            let mut rb = self
                .request(
                    Method::PUT,
                    &format!("/api/v1/cart/items/{}", self.sku()),
                    Some(&who),
                )
                .json(&json!({ "quantity": rand::rng().random_range(1..=3u32) }));
            if let Some(e) = &etag {
                rb = rb.header("if-match", e);
            }
            match self.call("cart_set_if_match", t, rb).await {
                // 412: another device changed the cart; the body is the current cart and
                // the client redoes its change against it.
                Some(r) if r.status == 200 || r.status == 412 => etag = r.etag.or(etag),
                _ => {}
            }
        }
        let t = self.think().await;
        self.read(&who, t).await;
        self.read(&who, Instant::now()).await;
    }

    /// Audited lines' totals against Postgres (see [`Audit`]).
    pub async fn verify(&self, database_url: &str) -> anyhow::Result<Audit> {
        let entries: Vec<((String, String), (u64, u64))> = self
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(database_url)
            .await?;
        let carts: Vec<uuid::Uuid> = entries
            .iter()
            .filter_map(|((c, _), _)| c.parse().ok())
            .collect();
        let rows: Vec<(uuid::Uuid, String, i32)> = sqlx::query_as(
            "SELECT cart_id, product_id, quantity FROM cart.cart_items \
             WHERE cart_id = ANY($1) AND product_id LIKE $2",
        )
        .bind(&carts)
        .bind(format!("{}%", self.audit_prefix))
        .fetch_all(&pool)
        .await?;
        let db: HashMap<(String, String), u64> = rows
            .into_iter()
            .map(|(c, p, q)| ((c.to_string(), p), u64::try_from(q).unwrap_or(0)))
            .collect();
        let mut audit = Audit {
            lines: entries.len() as u64,
            ..Audit::default()
        };
        for (key, (acked, uncertain)) in &entries {
            let have = db.get(key).copied().unwrap_or(0);
            audit.acknowledged_units += acked;
            audit.uncertain_units += uncertain;
            audit.lost_units += acked.saturating_sub(have);
            audit.excess_units += have.saturating_sub(acked + uncertain);
        }
        Ok(audit)
    }
}

enum Actor<'a> {
    User(&'a User),
    Guest(Guest),
}

impl Actor<'_> {
    fn who(&self) -> Who<'_> {
        match self {
            Actor::User(u) => Who::User(u),
            Actor::Guest(g) => Who::Guest(g),
        }
    }
}

/// Offers the profile's arrivals (after `warmup` at its starting rate) and waits for
/// the last journeys to end.
pub async fn drive(ctx: Arc<Ctx>, profile: &Profile, mix: Mix, opts: &Options) {
    let per_arrival = mix.requests_per_arrival();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let warm = Profile::Steady {
        rate: profile.rate_at(0.0),
        duration: opts.warmup.as_secs_f64(),
    };
    let start = ctx.rec.start;
    let schedule = warm.arrivals(per_arrival).chain(
        profile
            .arrivals(per_arrival)
            .map(|t| t + opts.warmup.as_secs_f64()),
    );
    for t in schedule {
        let due = start + Duration::from_secs_f64(t);
        if due > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due.into()).await;
        }
        if in_flight.load(Ordering::Relaxed) >= opts.max_in_flight {
            ctx.rec.dropped(due);
            continue;
        }
        let (sc, requests) = mix.pick();
        ctx.rec.offered(due, requests.round() as u64);
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (ctx, in_flight) = (ctx.clone(), in_flight.clone());
        tokio::spawn(async move {
            ctx.scenario(sc, due).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Journeys still going finish within their think times and timeouts.
    let grace = opts.timeout + opts.think * 12 + Duration::from_secs(1);
    let until = Instant::now() + grace;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
pub fn own_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture we run on.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_mix_has_the_documented_shares() {
        let mut n = [0u32; 5];
        for _ in 0..100_000 {
            let i = match Mix::Standard.pick().0 {
                Scenario::Read => 0,
                Scenario::Add => 1,
                Scenario::Update => 2,
                Scenario::SessionOrRefresh => 3,
                Scenario::Login => 4,
                _ => unreachable!("not in the standard mix"),
            };
            n[i] += 1;
        }
        for (got, want) in n.iter().zip([60.0, 25.0, 8.0, 5.0, 2.0]) {
            let pct = f64::from(*got) / 1000.0;
            assert!((pct - want).abs() < 0.6, "{got} vs {want}%");
        }
        assert_eq!(Mix::Standard.requests_per_arrival(), 1.0);
        assert!(Mix::Journeys.requests_per_arrival() > 5.0);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(own_cpu_secs().is_some_and(|s| s >= 0.0));
    }
}
