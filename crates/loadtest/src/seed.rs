//! `loadtest seed`: many users, each with a cart of a few lines, a live session and a
//! token pair, in about a minute per 100,000, for realistic state sizes before a run.
//!
//! Registering through the API would cost an argon2id hash per user (tens of ms of CPU
//! each, by design), so users and their carts are written to Postgres directly in bulk
//! and share one hash of one password, computed once with the same parameters auth-svc
//! uses (so logging in as a seeded user costs what a real login costs). Sessions and
//! tokens come from session-svc and auth-svc over their internal API, so their formats
//! stay theirs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use domain::identity::INTERNAL_TOKEN_HEADER;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::pool::SeededUser;

#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// How many users to create.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Lines in each user's cart.
    #[arg(long, default_value_t = 3)]
    pub items: u32,
    /// Where to write the pool (one JSON line per user, with its tokens: keep it private).
    #[arg(long, default_value = "target/loadtest/pool.jsonl")]
    pub out: PathBuf,
    /// The platform's Postgres (the database auth-svc and cart-svc use).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "SESSION_URL", default_value = "http://127.0.0.1:8082")]
    pub session_url: String,
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:8081")]
    pub auth_url: String,
    /// The platform's internal credential (scripts/up.sh keeps it in .data/internal-token).
    #[arg(long, env = "INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: String,
    /// The password every seeded user gets.
    #[arg(long, default_value = "loadtest-password-1")]
    pub password: String,
    /// Internal calls in flight while creating sessions and tokens.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

pub async fn seed(a: SeedArgs) -> anyhow::Result<()> {
    if a.users == 0 {
        bail!("--users must be at least 1");
    }
    if !(1..=100).contains(&a.items) {
        bail!("--items must be 1..=100 (a cart holds at most 100 lines)");
    }
    let t0 = Instant::now();
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&a.database_url)
        .await
        .context("cannot connect to --database-url")?;
    let hash = shared_hash(&a.password)?;
    let batch_tag: u32 = rand::random();
    let mut users: Vec<SeededUser> = (0..a.users)
        .map(|i| SeededUser {
            user_id: Uuid::now_v7().to_string(),
            email: format!("lt{batch_tag:08x}-{i}@loadtest.example"),
            password: a.password.clone(),
            cart_id: Uuid::now_v7().to_string(),
            session_id: String::new(),
            access_token: String::new(),
            refresh_token: String::new(),
        })
        .collect();

    for chunk in users.chunks(10_000) {
        let ids: Vec<Uuid> = chunk
            .iter()
            .filter_map(|u| u.user_id.parse().ok())
            .collect();
        let carts: Vec<Uuid> = chunk
            .iter()
            .filter_map(|u| u.cart_id.parse().ok())
            .collect();
        let emails: Vec<&str> = chunk.iter().map(|u| u.email.as_str()).collect();
        let mut tx = pg.begin().await?;
        sqlx::query(
            "INSERT INTO auth.users (user_id, email, password_hash) \
             SELECT u, e, $3 FROM unnest($1::uuid[], $2::text[]) AS t(u, e)",
        )
        .bind(&ids)
        .bind(&emails)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .context("inserting users (is auth-svc's schema migrated?)")?;
        sqlx::query(
            "INSERT INTO cart.carts (cart_id, user_id, version) \
             SELECT c, u, $3 FROM unnest($1::uuid[], $2::uuid[]) AS t(c, u)",
        )
        .bind(&carts)
        .bind(&ids)
        .bind(i64::from(a.items))
        .execute(&mut *tx)
        .await
        .context("inserting carts (is cart-svc's schema migrated?)")?;
        sqlx::query(
            "INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity) \
             SELECT gen_random_uuid(), c, 'sku-' || n, 1 \
             FROM unnest($1::uuid[]) AS t(c), generate_series(1, $2) AS n",
        )
        .bind(&carts)
        .bind(i32::try_from(a.items)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let rows_done = t0.elapsed();

    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let (client, session_url, auth_url, token) =
        (&client, &a.session_url, &a.auth_url, &a.internal_token);
    let made: Vec<(usize, [String; 3])> = stream::iter(users.iter().enumerate())
        .map(|(i, u)| async move {
            let s = post(
                client,
                &format!("{session_url}/internal/v1/sessions"),
                token,
                json!({ "kind": "user", "user_id": u.user_id, "cart_id": u.cart_id }),
            )
            .await?;
            let sid = field(&s, "session_id")?;
            let t = post(
                client,
                &format!("{auth_url}/internal/v1/tokens"),
                token,
                json!({ "user_id": u.user_id, "sid": sid }),
            )
            .await?;
            anyhow::Ok((
                i,
                [sid, field(&t, "access_token")?, field(&t, "refresh_token")?],
            ))
        })
        .buffer_unordered(a.concurrency.max(1))
        .try_collect()
        .await?;
    for (i, [sid, access, refresh]) in made {
        if let Some(u) = users.get_mut(i) {
            u.session_id = sid;
            u.access_token = access;
            u.refresh_token = refresh;
        }
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::pool::write_lines(&a.out, &users)?;
    let total = t0.elapsed();
    let line = json!({
        "users": users.len(),
        "cart_lines": users.len() * a.items as usize,
        "rows_seconds": rows_done.as_secs_f64(),
        "sessions_and_tokens_seconds": (total - rows_done).as_secs_f64(),
        "total_seconds": total.as_secs_f64(),
        "users_per_second": users.len() as f64 / total.as_secs_f64(),
        "pool": a.out.display().to_string(),
    });
    crate::say(&line.to_string());
    Ok(())
}

/// One argon2id hash (auth-svc's minimum parameters: m = 19 MiB, t = 2, p = 1).
fn shared_hash(password: &str) -> anyhow::Result<String> {
    let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let res = client
        .post(url)
        .header(INTERNAL_TOKEN_HEADER, token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status}: {body}");
    }
    Ok(body)
}

fn field(v: &Value, name: &str) -> anyhow::Result<String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {name} in {v}"))
}
