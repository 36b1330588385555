-- Carts for the pgbench floors of scripts/bench-cart.sh: :carts guest carts with 3 lines
-- each (and their line_changes rows), shaped like the carts the script seeds through
-- cart-svc, but with ids of their own (00000000-0000-4000-8000-<n, 12 digits>) so the
-- floors never touch the service's carts. Run with: psql -v carts=N -f pg-seed.sql
BEGIN;
INSERT INTO cart.carts (cart_id, guest_token_hash, version, created_at, updated_at)
SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       lpad(n::text, 64, '0'), 3, now(), now()
FROM generate_series(1, :carts) AS n
ON CONFLICT DO NOTHING;

INSERT INTO cart.cart_items (cart_item_id, cart_id, product_id, quantity, added_at, updated_at)
SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       'sku-' || p, p, now(), now()
FROM generate_series(1, :carts) AS n, generate_series(1, 3) AS p
ON CONFLICT DO NOTHING;

INSERT INTO cart.line_changes (cart_id, product_id, changed_version)
SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'sku-' || p, p
FROM generate_series(1, :carts) AS n, generate_series(1, 3) AS p
ON CONFLICT DO NOTHING;
COMMIT;
