-- What exactly-once needs: idempotency records, applied offline op ids, and the version
-- at which each line last changed (for offline conflict detection).

-- The first outcome of a request sent with an Idempotency-Key, written in the same
-- transaction as the change it describes, so a crash can never separate the two.
CREATE TABLE cart.idempotency_keys (
    cart_id         uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    -- SHA-256 (hex) of method, path, If-Match and the canonical JSON body: a retry must
    -- be the same request, or it is refused (422).
    request_hash    text        NOT NULL,
    response_status smallint    NOT NULL,
    response_etag   text,
    response_body   text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (cart_id, idempotency_key),
    CONSTRAINT idempotency_keys_key_format CHECK (idempotency_key ~ '^[!-~]{1,255}$'),
    -- Only outcomes a retry must see again are stored; failures worth retrying (5xx)
    -- never are.
    CONSTRAINT idempotency_keys_status_stored CHECK (response_status BETWEEN 200 AND 499)
);
CREATE INDEX idempotency_keys_created_at_idx ON cart.idempotency_keys (created_at);

-- Every offline op id a cart has processed, with its first outcome: a replayed op is a
-- duplicate, whatever happened to it the first time.
CREATE TABLE cart.applied_ops (
    cart_id    uuid        NOT NULL,
    op_id      text        NOT NULL,
    status     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT applied_ops_pkey PRIMARY KEY (cart_id, op_id),
    CONSTRAINT applied_ops_op_id_format CHECK (op_id ~ '^[!-~]{1,64}$'),
    CONSTRAINT applied_ops_status_known CHECK (status IN ('applied', 'conflict', 'rejected'))
);
CREATE INDEX applied_ops_applied_at_idx ON cart.applied_ops (applied_at);

-- The cart version at which each line last changed, kept after the line is removed (a
-- tombstone), so an offline `set` or `remove` can tell whether another device touched
-- the line after the client's base_version.
CREATE TABLE cart.line_changes (
    cart_id         uuid   NOT NULL REFERENCES cart.carts (cart_id) ON DELETE CASCADE,
    product_id      text   NOT NULL,
    changed_version bigint NOT NULL,
    CONSTRAINT line_changes_pkey PRIMARY KEY (cart_id, product_id)
);
