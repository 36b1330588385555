//! The `auth` schema's queries.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ThrottleSettings;

pub struct User {
    pub user_id: Uuid,
    pub password_hash: String,
}

pub async fn find_user(pool: &PgPool, email: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        "SELECT user_id, password_hash FROM auth.users WHERE email = $1",
        email
    )
    .fetch_optional(pool)
    .await
}

/// `false` when the email is taken.
pub async fn insert_user(
    pool: &PgPool,
    user_id: Uuid,
    email: &str,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        "INSERT INTO auth.users (user_id, email, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (email) DO NOTHING",
        user_id,
        email,
        password_hash
    )
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Until when the account's logins are refused, if they are now.
pub async fn blocked_until(
    pool: &PgPool,
    email: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let until = sqlx::query_scalar!(
        "SELECT blocked_until FROM auth.login_throttle
         WHERE email = $1 AND blocked_until > now()",
        email
    )
    .fetch_optional(pool)
    .await?;
    Ok(until.flatten())
}

/// Counts a failed login; returns the block it caused, if it caused one.
pub async fn record_failure(
    pool: &PgPool,
    email: &str,
    t: &ThrottleSettings,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let window = secs(t.window);
    let lockout = secs(t.lockout);
    let until = sqlx::query_scalar!(
        r#"INSERT INTO auth.login_throttle AS t (email, failures, window_started, blocked_until, updated_at)
           VALUES ($1, 1, now(), CASE WHEN $3 <= 1 THEN now() + make_interval(secs => $4) END, now())
           ON CONFLICT (email) DO UPDATE SET
             failures = CASE WHEN t.window_started < now() - make_interval(secs => $2) THEN 1
                             ELSE t.failures + 1 END,
             window_started = CASE WHEN t.window_started < now() - make_interval(secs => $2) THEN now()
                                   ELSE t.window_started END,
             blocked_until = CASE
               WHEN (CASE WHEN t.window_started < now() - make_interval(secs => $2) THEN 1
                          ELSE t.failures + 1 END) >= $3
               THEN now() + make_interval(secs => $4) END,
             updated_at = now()
           RETURNING blocked_until"#,
        email,
        window,
        t.max_failures,
        lockout
    )
    .fetch_one(pool)
    .await?;
    Ok(until)
}

pub async fn clear_failures(pool: &PgPool, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM auth.login_throttle WHERE email = $1", email)
        .execute(pool)
        .await?;
    Ok(())
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

pub async fn insert_refresh(
    pool: &PgPool,
    token_hash: &str,
    family_id: Uuid,
    user_id: Uuid,
    session_id: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, session_id, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
        token_hash,
        family_id,
        user_id,
        session_id,
        expires_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What presenting a refresh token led to.
pub enum Refreshed {
    /// Exchanged: the presented token is now used, `new_hash` is its successor.
    Rotated { user_id: Uuid, session_id: String },
    /// Unknown, expired or revoked.
    Invalid,
    /// Already used: it leaked. The whole family is now revoked.
    Reused { user_id: Uuid, session_id: String },
}

/// Exchanges a refresh token for its successor in one transaction, so two racing
/// refreshes with one token cannot both succeed.
pub async fn rotate_refresh(
    pool: &PgPool,
    token_hash: &str,
    new_hash: &str,
    ttl: std::time::Duration,
) -> Result<Refreshed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        "SELECT family_id, user_id, session_id, expires_at, used_at, revoked_at
         FROM auth.refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        token_hash
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Refreshed::Invalid);
    };
    if row.revoked_at.is_some() || row.expires_at <= Utc::now() {
        return Ok(Refreshed::Invalid);
    }
    if row.used_at.is_some() {
        sqlx::query!(
            "UPDATE auth.refresh_tokens SET revoked_at = now()
             WHERE family_id = $1 AND revoked_at IS NULL",
            row.family_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Refreshed::Reused {
            user_id: row.user_id,
            session_id: row.session_id,
        });
    }
    sqlx::query!(
        "UPDATE auth.refresh_tokens SET used_at = now() WHERE token_hash = $1",
        token_hash
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO auth.refresh_tokens (token_hash, family_id, user_id, session_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        new_hash,
        row.family_id,
        row.user_id,
        row.session_id,
        secs(ttl)
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Refreshed::Rotated {
        user_id: row.user_id,
        session_id: row.session_id,
    })
}

/// Revokes every refresh token of a session (logout); how many were live.
pub async fn revoke_session(pool: &PgPool, session_id: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE auth.refresh_tokens SET revoked_at = now()
         WHERE session_id = $1 AND revoked_at IS NULL",
        session_id
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
