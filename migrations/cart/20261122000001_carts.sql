-- Carts and their lines. Postgres is the source of truth for carts (ARCHITECTURE.md);
-- a cart outlives every session that pointed at it.
CREATE SCHEMA IF NOT EXISTS cart;

CREATE TABLE cart.carts (
    cart_id          uuid        PRIMARY KEY,
    -- NULL for a guest cart; set when the cart belongs to an account.
    user_id          uuid,
    status           text        NOT NULL DEFAULT 'active',
    -- Grows by one with every change that alters the cart (ETag, If-Match).
    version          bigint      NOT NULL DEFAULT 0,
    -- SHA-256 (hex) of the guest's cart token: recovers the cart after its session is
    -- gone. The token itself is never stored.
    guest_token_hash text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Last change; drives retention (guest carts 14 days, user carts 90 days).
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT carts_status_known CHECK (status IN ('active', 'merged', 'closed')),
    CONSTRAINT carts_version_non_negative CHECK (version >= 0),
    CONSTRAINT carts_guest_token_hash_hex CHECK (guest_token_hash ~ '^[0-9a-f]{64}$')
);

-- A user has at most one active cart: every device of theirs shares it.
CREATE UNIQUE INDEX carts_one_active_per_user
    ON cart.carts (user_id)
    WHERE status = 'active' AND user_id IS NOT NULL;

-- Recovery by cart token is a lookup by its hash.
CREATE UNIQUE INDEX carts_guest_token_hash_key
    ON cart.carts (guest_token_hash)
    WHERE guest_token_hash IS NOT NULL;

-- Retention scans walk carts by age of last change.
CREATE INDEX carts_updated_at_idx ON cart.carts (updated_at);

CREATE TABLE cart.cart_items (
    cart_item_id uuid        PRIMARY KEY,
    cart_id      uuid        NOT NULL REFERENCES cart.carts (cart_id) ON DELETE CASCADE,
    product_id   text        NOT NULL,
    quantity     integer     NOT NULL,
    added_at     timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- One line per product; also the index every per-cart read uses.
    CONSTRAINT cart_items_cart_product_key UNIQUE (cart_id, product_id),
    -- The configurable per-line limit (default 99) is enforced by the service; this is
    -- the ceiling no configuration may exceed, and the floor: a line of 0 does not exist.
    CONSTRAINT cart_items_quantity_range CHECK (quantity BETWEEN 1 AND 9999),
    CONSTRAINT cart_items_product_id_format CHECK (product_id ~ '^[A-Za-z0-9._:-]{1,255}$')
);
