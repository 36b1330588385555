#!/usr/bin/env bash
# Regenerates the committed sqlx offline data (.sqlx/) so builds need no database.
# Run it after changing a migration or any sqlx::query!/query_as!/query_scalar! call.
# Uses DATABASE_URL (a superuser URL; a scratch database is created next to it), else
# a throwaway Postgres started with scripts/lib/datastores.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/datastores.sh
source scripts/lib/datastores.sh

if [[ -z "${DATABASE_URL:-}" ]]; then
  tmp=$(mktemp -d)
  port=$(ds_free_port)
  trap 'ds_pg_stop "$tmp/pg" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
  ds_pg_start "$tmp/pg" "$port" "$tmp/pg.log" throwaway
  admin="postgres://postgres@127.0.0.1:$port/postgres"
else
  admin="$DATABASE_URL"
fi
db="sqlx_prepare_$$"
scratch="${admin%/*}/$db"
psql -q "$admin" -c "CREATE DATABASE $db"
trap 'psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; ${tmp:+ds_pg_stop "$tmp/pg" >/dev/null 2>&1; rm -rf "$tmp"}' EXIT
# Every schema's migrations, oldest first (file names start with a timestamp).
while IFS= read -r f; do
  psql -q -v ON_ERROR_STOP=1 "$scratch" -f "$f"
done < <(find migrations -name '*.sql' -printf '%f %p\n' | sort | cut -d' ' -f2)
rm -rf .sqlx && mkdir .sqlx
# Only the crates that use the query macros (so a crate mid-edit elsewhere cannot stop
# this); touch them so their macros re-expand against the database.
packages=()
for dir in crates/*/; do
  if grep -rqE 'sqlx::query(_as|_scalar)?!' "$dir"src 2>/dev/null; then
    packages+=(-p "$(basename "$dir")")
    touch "$dir"src/lib.rs
  fi
done
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$scratch" \
  cargo check --all-targets --quiet "${packages[@]}"
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
