-- Refresh tokens: opaque and random; only their SHA-256 is stored. Every login starts a
-- family; every refresh marks the presented token used and adds its successor to the
-- same family. A used token presented again means it leaked: the whole family is
-- revoked.
CREATE TABLE auth.refresh_tokens (
    token_hash  text        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL REFERENCES auth.users (user_id) ON DELETE CASCADE,
    -- The session (JWT `sid`) the family keeps alive; logout ends both.
    session_id  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- Set when the token was exchanged for its successor.
    used_at     timestamptz,
    -- Set on logout or on reuse of a used token (the whole family at once).
    revoked_at  timestamptz,
    CONSTRAINT refresh_tokens_hash_hex CHECK (token_hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX refresh_tokens_family_idx ON auth.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_session_idx ON auth.refresh_tokens (session_id);
-- The cleanup worker deletes rows past expiry.
CREATE INDEX refresh_tokens_expires_at_idx ON auth.refresh_tokens (expires_at);

-- Failed logins per account (by normalised email, known or not, so an unknown address is
-- throttled exactly like a real one and the two cannot be told apart).
CREATE TABLE auth.login_throttle (
    email          text        PRIMARY KEY,
    failures       integer     NOT NULL,
    window_started timestamptz NOT NULL,
    blocked_until  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_throttle_updated_at_idx ON auth.login_throttle (updated_at);
