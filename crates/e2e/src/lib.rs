//! End-to-end harness: starts the five real binaries against a real Postgres and a real
//! Redis, each test on its own fresh database and Redis key prefix, and gives the tests
//! a small vocabulary to walk the public API (API.md) through the gateway.
//!
//! Nothing here is mocked: a journey that passes here passed through the same HTTP,
//! the same Redis scripts and the same SQL as in production.
//!
//! Needs `DATABASE_URL` (a superuser URL: the harness creates a database per test) and
//! `REDIS_URL`; `scripts/test.sh` starts throw-away ones and sets both. The binaries are
//! taken from `E2E_BIN_DIR`, else `<workspace>/target/debug`
//! (`cargo build --workspace --bins` first).
//!
//! A test that needs to break a datastore asks for one of its own:
//! [`PlatformOptions::own_redis`] gives cart-svc a private `redis-server` (stop, restart,
//! freeze, thaw, restore an old snapshot), and [`PlatformOptions::own_postgres`] runs
//! the platform on a private Postgres cluster (pause and resume every process of it).
//! Both need the server binaries installed (`redis-server`; `initdb` and `postgres` from
//! `pg_config --bindir` or `/usr/lib/postgresql/*/bin`); as root, Postgres runs as the
//! `postgres` system user. Dropping the platform resumes and stops them.

mod cart;
mod datastores;
mod guest;
mod platform;
mod reply;
mod user;

pub use cart::{rfc3339_utc, CartLine, CartView, DbCart, OpResult, OpsReply};
pub use datastores::{PrivatePostgres, PrivateRedis};
pub use guest::Guest;
pub use platform::{binary, Platform, PlatformOptions};
pub use reply::{Problem, Reply, SetCookie};
pub use user::{new_email, User};
