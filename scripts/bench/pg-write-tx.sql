-- pgbench floor for scripts/bench-cart.sh: the whole transaction cart-svc runs for
-- POST /api/v1/cart/items on a guest cart without Idempotency-Key, statement for
-- statement: 8 round trips and one commit (one WAL flush, shared with concurrent
-- commits). Run with -M prepared, as sqlx prepares and caches every statement.
--
-- The statements as cart-svc sends them (crates/cart-svc/src/store.rs: Store::begin ->
-- lock_guest_cart -> load_lines; CartTx::commit -> write_lines -> UPDATE; the script
-- checks the "--|" lines still appear there and warns when they no longer do):
--| INSERT INTO cart.carts (cart_id, guest_token_hash, created_at, updated_at)
--|          VALUES ($1, $2, $3, $3)
--|          ON CONFLICT DO NOTHING
--|
--| SELECT cart_id, user_id, status, version, updated_at
--|          FROM cart.carts WHERE cart_id = $1 FOR UPDATE
--|
--| SELECT product_id, quantity, added_at, updated_at
--|          FROM cart.cart_items WHERE cart_id = $1
--|          ORDER BY added_at, cart_item_id
--|
--| INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
--|              SELECT u.id, $1, u.product_id, u.quantity, u.added_at, u.updated_at
--|              FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], $6::timestamptz[])
--|                   AS u(id, product_id, quantity, added_at, updated_at)
--|              ON CONFLICT (cart_id, product_id)
--|              DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at
--|
--| INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
--|          SELECT $1, u.product_id, u.version FROM UNNEST($2::text[], $3::int8[]) AS u(product_id, version)
--|          ON CONFLICT (cart_id, product_id) DO UPDATE SET changed_version = EXCLUDED.changed_version
--|
--| UPDATE cart.carts SET version = $2, updated_at = $3 WHERE cart_id = $1
--
-- Below, the same statements with the bound values computed in SQL, since pgbench can
-- only bind numbers: the cart is one of the :carts carts of pg-seed.sql, the product
-- one of 20. cart-svc computes the new quantity and version in Rust from what it read
-- under the lock; here the quantity is 1 and the version is bumped in SQL: the same
-- rows are written, with the same indexes touched.
\set n random(1, :carts)
\set p random(1, 20)
BEGIN;
INSERT INTO cart.carts (cart_id, guest_token_hash, created_at, updated_at)
         VALUES (('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, lpad(:n::text, 64, '0'), now(), now())
         ON CONFLICT DO NOTHING;
SELECT cart_id, user_id, status, version, updated_at
         FROM cart.carts WHERE cart_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid FOR UPDATE;
SELECT product_id, quantity, added_at, updated_at
         FROM cart.cart_items WHERE cart_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid
         ORDER BY added_at, cart_item_id;
INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
             SELECT u.id, ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, u.product_id, u.quantity, u.added_at, u.updated_at
             FROM UNNEST(ARRAY[gen_random_uuid()]::uuid[], ARRAY['sku-' || :p::text]::text[], ARRAY[1]::int4[], ARRAY[now()]::timestamptz[], ARRAY[now()]::timestamptz[])
                  AS u(id, product_id, quantity, added_at, updated_at)
             ON CONFLICT (cart_id, product_id)
             DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at;
INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
         SELECT ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, u.product_id, u.version FROM UNNEST(ARRAY['sku-' || :p::text]::text[], ARRAY[1]::int8[]) AS u(product_id, version)
         ON CONFLICT (cart_id, product_id) DO UPDATE SET changed_version = EXCLUDED.changed_version;
UPDATE cart.carts SET version = version + 1, updated_at = now() WHERE cart_id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
COMMIT;
