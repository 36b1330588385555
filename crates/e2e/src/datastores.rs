//! Datastores a test controls: a private `redis-server` and a private Postgres cluster,
//! each a child process of the test, on a free port, in a temporary directory, so a test
//! can stop, freeze or pause them without touching the shared ones (or other tests).
//!
//! Signals are sent with the `kill` program (the workspace forbids `unsafe`, so no libc).
//! Dropping either one resumes it (a frozen process cannot exit) and stops it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// How long a private datastore may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a private datastore gets to exit after it was told to.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The guarded value, even after a panic elsewhere poisoned the lock.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True once the child in `slot` has exited (false when there is none).
fn has_exited(slot: &Mutex<Option<Child>>) -> bool {
    locked(slot)
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
}

/// Sends `signal` (e.g. `STOP`, `CONT`, `KILL`) to every pid, ignoring pids that are gone.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The pids whose parent is `parent`, read from `/proc/<pid>/stat`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may hold spaces or parentheses.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Waits for a child to exit, killing it after `grace`.
fn reap(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The first program of `candidates` that exists, looking names without a slash up in
/// `PATH`.
fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    for candidate in candidates {
        if candidate.contains('/') {
            let path = PathBuf::from(candidate);
            if path.is_file() {
                return Some(path);
            }
        } else if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(candidate))
                .find(|p| p.is_file())
        }) {
            return Some(path);
        }
    }
    None
}

// ---------------------------------------------------------------------------- Redis

/// A `redis-server` of the test's own: no persistence, `127.0.0.1:<port>` only.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    program: PathBuf,
    child: Mutex<Option<Child>>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`, else `/usr/bin`) on `port` and waits until it
    /// answers `PING`.
    pub fn start(port: u16) -> PrivateRedis {
        let program = find_program(&["redis-server", "/usr/bin/redis-server"]).unwrap_or_else(|| {
            panic!("redis-server is not installed (package redis-server): a test needs a Redis it controls")
        });
        let dir = std::env::temp_dir().join(format!("e2e-redis-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let redis = PrivateRedis {
            port,
            dir,
            program,
            child: Mutex::new(None),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn pid(&self) -> Option<u32> {
        locked(&self.child).as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients); its data is gone.
    pub fn stop(&self) {
        let taken = locked(&self.child).take();
        if let Some(mut child) = taken {
            signal("CONT", &[child.id()]);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes what the server holds now to its snapshot file (`SAVE`): the next
    /// [`PrivateRedis::restart`] comes back with that data, however old it is by then,
    /// the way a Redis restored from an old RDB file does.
    pub fn save(&self) {
        let reply = self.command(b"SAVE\r\n");
        assert!(
            reply.starts_with("+OK"),
            "SAVE on the private redis-server on port {} answered {reply:?}",
            self.port
        );
    }

    /// Starts the server again on the same port (stopping it first if it runs), with the
    /// data of the last [`PrivateRedis::save`] if any, else empty, and waits until it
    /// answers `PING`.
    pub fn restart(&self) {
        self.stop();
        let log = self.log_path();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone a log file handle");
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let child = Command::new(&self.program)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
            ])
            .args([
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir,
                "--protected-mode",
                "no",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        *locked(&self.child) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers_ping() {
            let exited = has_exited(&self.child);
            if exited || Instant::now() >= deadline {
                panic!(
                    "the private redis-server on port {} did not answer PING{}; its log:\n{}",
                    self.port,
                    if exited { " (it exited)" } else { "" },
                    tail(&log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered, the
    /// way a stalled or partitioned Redis looks to a client.
    pub fn freeze(&self) {
        if let Some(pid) = self.pid() {
            signal("STOP", &[pid]);
        }
    }

    /// Lets a frozen server go on (SIGCONT), with the data it held.
    pub fn thaw(&self) {
        if let Some(pid) = self.pid() {
            signal("CONT", &[pid]);
        }
    }

    fn answers_ping(&self) -> bool {
        self.command(b"PING\r\n").starts_with("+PONG")
    }

    /// Runs one command, e.g. `["HGET", key, "v"]`, and returns the raw RESP reply
    /// (its first 512 bytes; empty when the server does not answer within 5 s).
    pub fn query(&self, args: &[&str]) -> String {
        let mut command = format!("*{}\r\n", args.len());
        for arg in args {
            command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.command(command.as_bytes())
    }

    /// Sends one command and returns the first bytes of the reply (empty when the
    /// server cannot be reached or does not answer within 5 s).
    fn command(&self, command: &[u8]) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream.write_all(command).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------- Postgres

/// A Postgres cluster of the test's own (`initdb` into a temporary directory, trust
/// authentication, no fsync), listening on `127.0.0.1:<port>` and on a unix socket in
/// that directory. As root, it runs as the `postgres` system user (Postgres refuses
/// root).
pub struct PrivatePostgres {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    paused: Mutex<Vec<u32>>,
}

impl PrivatePostgres {
    /// Runs `initdb`, starts `postgres` on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> PrivatePostgres {
        let bin = pg_bindir();
        let owner = if is_root() {
            Some(postgres_user().unwrap_or_else(|| {
                panic!(
                    "running as root, but there is no `postgres` system user to run a \
                     private Postgres as (Postgres refuses to run as root)"
                )
            }))
        } else {
            None
        };
        let dir = reachable_temp_dir().join(format!("e2e-pg-{}", Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // The cluster is ours from here on: an early panic still removes the directory.
        let pg = PrivatePostgres {
            port,
            dir: dir.clone(),
            child: Mutex::new(None),
            paused: Mutex::new(Vec::new()),
        };
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", dir.display()));
        }
        let data = dir.join("data");
        let log = pg.log_path();

        let as_owner = |program: &Path| {
            let mut command = Command::new(program);
            command.env_clear();
            if let Ok(path) = std::env::var("PATH") {
                command.env("PATH", path);
            }
            command
                .env("LC_ALL", "C")
                .current_dir(&dir)
                .stdin(Stdio::null());
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
            command
        };
        let log_file = || {
            File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()))
        };

        let out = log_file();
        let status = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .stdout(out.try_clone().expect("clone a log file handle"))
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}/initdb: {e}", bin.display()));
        assert!(
            status.success(),
            "initdb failed ({status}); its output:\n{}",
            tail(&log, 30)
        );

        let out = log_file();
        let child = as_owner(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdout(out.try_clone().expect("clone a log file handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}/postgres: {e}", bin.display()));
        *locked(&pg.child) = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(conn) = PgConnection::connect(&pg.admin_url()).await {
                let _ = conn.close().await;
                break;
            }
            let exited = has_exited(&pg.child);
            if exited || Instant::now() >= deadline {
                panic!(
                    "the private Postgres on port {port} did not accept connections{}; its log:\n{}",
                    if exited { " (it exited)" } else { "" },
                    tail(&log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pg
    }

    /// A superuser URL on the cluster's `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn postmaster(&self) -> Option<u32> {
        locked(&self.child).as_ref().map(Child::id)
    }

    /// Freezes the whole cluster: SIGSTOP to the postmaster (so it forks nothing more),
    /// then to every backend and helper process. Connections stay open, new ones are
    /// queued by the kernel, nothing is answered: a Postgres that hangs.
    pub fn pause(&self) {
        let Some(postmaster) = self.postmaster() else {
            return;
        };
        signal("STOP", &[postmaster]);
        let mut stopped = vec![postmaster];
        let children = children_of(postmaster);
        signal("STOP", &children);
        stopped.extend(children);
        locked(&self.paused).extend(stopped);
    }

    /// Lets a paused cluster go on (SIGCONT to the postmaster and all its children).
    pub fn resume(&self) {
        let mut pids: Vec<u32> = std::mem::take(&mut *locked(&self.paused));
        if let Some(postmaster) = self.postmaster() {
            pids.extend(children_of(postmaster));
            pids.push(postmaster);
        }
        pids.sort_unstable();
        pids.dedup();
        signal("CONT", &pids);
    }

    /// Resumes the cluster if paused and stops it (immediate shutdown, then a kill).
    pub fn stop(&self) {
        self.resume();
        let taken = locked(&self.child).take();
        if let Some(mut child) = taken {
            let postmaster = child.id();
            let children = children_of(postmaster);
            signal("QUIT", &[postmaster]);
            reap(&mut child, EXIT_GRACE);
            // Backends exit with the postmaster; make sure of it.
            signal("KILL", &children);
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding `initdb` and `postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bindir() -> PathBuf {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).unwrap_or_else(|| {
        panic!(
            "Postgres server binaries (initdb, postgres) not found via `pg_config --bindir` \
             or /usr/lib/postgresql/*/bin: a test needs a Postgres it controls"
        )
    })
}

/// The `postgres` system user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"postgres") && fields.len() > 3 {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// A temporary directory every user may traverse (each ancestor has `o+x`), so the
/// `postgres` user can reach a cluster created under it by root.
fn reachable_temp_dir() -> PathBuf {
    let traversable = |dir: &Path| {
        dir.is_dir()
            && dir
                .ancestors()
                .all(|a| fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    [
        std::env::temp_dir(),
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
    ]
    .into_iter()
    .find(|d| traversable(d))
    .unwrap_or_else(std::env::temp_dir)
}
