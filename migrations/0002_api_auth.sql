-- What the embedded API adds to the core schema: login sessions, API tokens, failed-login
-- records for rate limiting, TOTP replay protection, the study version a build was made from,
-- and a NOTIFY so the outbox relay publishes new jobs without waiting for its poll interval.

-- A browser session. The cookie carries a random value; only its keyed hash is stored, so a
-- database dump does not hand out sessions.
CREATE TABLE sessions (
    id_hash     text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    two_factor  boolean NOT NULL DEFAULT false,   -- the authenticator code was entered
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Token authentication for the JSON:API (`Authorization: Token <key>`); keyed hash only.
CREATE TABLE api_tokens (
    token_hash  text PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Failed password or authenticator attempts per (lower-cased) username, for the lockout.
CREATE TABLE login_failures (
    id          bigserial PRIMARY KEY,
    username    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_username ON login_failures (username, created_at);

-- The last accepted 30 s TOTP step: a code is accepted once only.
ALTER TABLE users ADD COLUMN totp_last_step bigint;

-- Hash of what a build was made from (study structure, metadata, player): a build of an
-- unchanged study with a pinned player is refused as already built.
ALTER TABLE builds ADD COLUMN study_fingerprint text;

CREATE FUNCTION job_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('job_outbox', NEW.id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER job_outbox_notify AFTER INSERT ON job_outbox
    FOR EACH ROW EXECUTE FUNCTION job_outbox_notify();
