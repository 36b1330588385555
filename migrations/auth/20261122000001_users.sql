-- Accounts. Passwords are stored only as argon2id PHC strings.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    user_id       uuid        PRIMARY KEY,
    -- Normalised (trimmed, lower-cased) before it is stored, so uniqueness is exact.
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_normalised CHECK (email = lower(btrim(email))),
    CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    CONSTRAINT users_password_hash_phc CHECK (password_hash LIKE '$argon2id$%')
);

CREATE UNIQUE INDEX users_email_key ON auth.users (email);
