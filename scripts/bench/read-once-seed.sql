-- Carts for the cache-miss phase of scripts/bench-cart.sh: :carts guest carts of 3 lines,
-- written straight into Postgres (through cart-svc it would take minutes), shaped like
-- the carts seeded through cart-svc (same products, quantities, body size). Each is read
-- once during the phase, so every read misses the cache for real. Their token hashes
-- start with f00df00df00df00d, which is how the script lists them for wrk afterwards.
-- Run with: psql -v carts=N -f read-once-seed.sql
BEGIN;
CREATE TEMP TABLE read_once ON COMMIT DROP AS
SELECT gen_random_uuid() AS cart_id,
       'f00df00df00df00d' || lpad(n::text, 16, '0') || md5(n::text) AS token_hash
FROM generate_series(1, :carts) AS n;

INSERT INTO cart.carts (cart_id, guest_token_hash, version, created_at, updated_at)
SELECT cart_id, token_hash, 3, now(), now() FROM read_once;

INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
SELECT gen_random_uuid(), cart_id, 'sku-' || p, p, now(), now()
FROM read_once, generate_series(1, 3) AS p;

INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
SELECT cart_id, 'sku-' || p, p FROM read_once, generate_series(1, 3) AS p;
COMMIT;
