-- pgbench floor for scripts/bench-cart.sh: the line upsert of cart-svc alone, in its own
-- transaction (autocommit: one round trip and one commit, i.e. one WAL flush shared
-- with concurrent commits, per statement). Run with -M prepared, as sqlx prepares and
-- caches every statement.
--
-- The statement as cart-svc sends it (crates/cart-svc/src/store.rs, write_lines; the
-- script checks the "--|" lines still appear there and warns when they no longer do):
--| INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
--|              SELECT u.id, $1, u.product_id, u.quantity, u.added_at, u.updated_at
--|              FROM UNNEST($2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], $6::timestamptz[])
--|                   AS u(id, product_id, quantity, added_at, updated_at)
--|              ON CONFLICT (cart_id, product_id)
--|              DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at
--
-- Below, the same statement with the bound values computed in SQL, since pgbench can
-- only bind numbers: the cart (one of the :carts carts of pg-seed.sql), a one-element
-- array per column, a fresh line id (cart-svc uses a v7 UUID; Postgres 15 only has
-- gen_random_uuid) and now() for the timestamps.
\set n random(1, :carts)
\set p random(1, 20)
INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
             SELECT u.id, ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, u.product_id, u.quantity, u.added_at, u.updated_at
             FROM UNNEST(ARRAY[gen_random_uuid()]::uuid[], ARRAY['sku-' || :p::text]::text[], ARRAY[1]::int4[], ARRAY[now()]::timestamptz[], ARRAY[now()]::timestamptz[])
                  AS u(id, product_id, quantity, added_at, updated_at)
             ON CONFLICT (cart_id, product_id)
             DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = EXCLUDED.updated_at;
