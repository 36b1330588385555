//! The shoppers a run acts as: users seeded in advance (`loadtest seed`, one JSON line
//! each) and guests whose sessions the run itself starts.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// One line of a pool file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeededUser {
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub cart_id: String,
    pub session_id: String,
    pub access_token: String,
    pub refresh_token: String,
}

pub struct User {
    user_id: String,
    session_id: String,
    pub email: String,
    pub password: String,
    pub cart_id: String,
    access: Mutex<String>,
    refresh: Mutex<String>,
    /// A refresh token works once: two concurrent refreshes of one user would look like
    /// token theft and revoke the family, so one at a time.
    refreshing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl User {
    pub fn access(&self) -> String {
        lock(&self.access).clone()
    }

    pub fn refresh_token(&self) -> String {
        lock(&self.refresh).clone()
    }

    pub fn set_tokens(&self, access: String, refresh: String) {
        *lock(&self.access) = access;
        *lock(&self.refresh) = refresh;
    }

    pub fn try_begin_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

pub struct Users(Vec<User>);

impl Users {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open the pool file {}", path.display()))?;
        let mut users = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let s: SeededUser = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?;
            users.push(User {
                user_id: s.user_id,
                session_id: s.session_id,
                email: s.email,
                password: s.password,
                cart_id: s.cart_id,
                access: Mutex::new(s.access_token),
                refresh: Mutex::new(s.refresh_token),
                refreshing: AtomicBool::new(false),
            });
        }
        Ok(Self(users))
    }

    /// Writes the users back with their current tokens: a refresh token works once,
    /// and the next run must not present a spent one (that revokes the session).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let lines: Vec<SeededUser> = self
            .0
            .iter()
            .map(|u| SeededUser {
                user_id: u.user_id.clone(),
                email: u.email.clone(),
                password: u.password.clone(),
                cart_id: u.cart_id.clone(),
                session_id: u.session_id.clone(),
                access_token: u.access(),
                refresh_token: u.refresh_token(),
            })
            .collect();
        let tmp = path.with_extension("saving");
        write_lines(&tmp, &lines)?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace the pool file {}", path.display()))
    }

    pub fn empty() -> Self {
        Self(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, i: usize) -> Option<&User> {
        self.0.get(i)
    }

    pub fn random(&self) -> Option<&User> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(rand::rng().random_range(0..self.0.len()))
    }
}

pub fn write_lines(path: &Path, users: &[SeededUser]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("cannot create the pool file {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for u in users {
        serde_json::to_writer(&mut w, u)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Guest {
    pub session_token: String,
}

/// Guests started during the run. Fresh ones wait for a login (a login ends the guest
/// session, so it must not be in anyone else's hands); the rest browse.
pub struct Guests {
    browsing: Mutex<Vec<Guest>>,
    fresh: Mutex<Vec<Guest>>,
    cap: usize,
}

impl Guests {
    pub fn new(cap: usize) -> Self {
        Self {
            browsing: Mutex::new(Vec::new()),
            fresh: Mutex::new(Vec::new()),
            cap,
        }
    }

    pub fn add(&self, g: Guest) {
        let mut fresh = lock(&self.fresh);
        if fresh.len() < 1000 {
            fresh.push(g);
            return;
        }
        drop(fresh);
        let mut b = lock(&self.browsing);
        if b.len() < self.cap {
            b.push(g);
        } else {
            let i = rand::rng().random_range(0..b.len());
            b[i] = g;
        }
    }

    pub fn random(&self) -> Option<Guest> {
        let b = lock(&self.browsing);
        if b.is_empty() {
            return None;
        }
        b.get(rand::rng().random_range(0..b.len())).cloned()
    }

    /// A guest nobody else uses, to log in with.
    pub fn take_fresh(&self) -> Option<Guest> {
        lock(&self.fresh).pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_keeps_the_rotated_tokens_for_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        let seeded = SeededUser {
            user_id: "u".into(),
            email: "e@x".into(),
            password: "p".into(),
            cart_id: "c".into(),
            session_id: "s".into(),
            access_token: "a0".into(),
            refresh_token: "r0".into(),
        };
        write_lines(&path, &[seeded]).unwrap();
        let users = Users::load(&path).unwrap();
        users.get(0).unwrap().set_tokens("a1".into(), "r1".into());
        users.save(&path).unwrap();
        let again = Users::load(&path).unwrap();
        let u = again.get(0).unwrap();
        assert_eq!((u.access(), u.refresh_token()), ("a1".into(), "r1".into()));
        assert_eq!((u.email.as_str(), u.cart_id.as_str()), ("e@x", "c"));
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains("\"session_id\":\"s\""), "{line}");
    }
}
