-- pgbench floor for scripts/bench-cart.sh: what cart-svc asks Postgres on a cache miss
-- of a guest cart: two statements on a pooled connection, no explicit transaction,
-- nothing written. Run with -M prepared, as sqlx prepares and caches every statement.
--
-- The statements as cart-svc sends them (crates/cart-svc/src/store.rs: Store::read ->
-- load_lines; the script checks the "--|" lines still appear there and warns when they
-- no longer do):
--| SELECT cart_id, user_id, status, version, updated_at
--|                      FROM cart.carts WHERE cart_id = $1
--|
--| SELECT product_id, quantity, added_at, updated_at
--|          FROM cart.cart_items WHERE cart_id = $1
--|          ORDER BY added_at, cart_item_id
--
-- Below, the same with the cart (one of the :carts carts of pg-seed.sql) computed in SQL.
\set n random(1, :carts)
SELECT cart_id, user_id, status, version, updated_at
                     FROM cart.carts WHERE cart_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
SELECT product_id, quantity, added_at, updated_at
         FROM cart.cart_items WHERE cart_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid
         ORDER BY added_at, cart_item_id;
