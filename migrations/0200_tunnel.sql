-- The public tunnel: an audit trail of sharing sessions (kept for ethics review, never pruned)
-- and the inspector's record of the requests that came through the tunnel (the last N kept).

CREATE TABLE tunnel_sessions (
    id            uuid PRIMARY KEY,
    started_by    text NOT NULL,
    provider      text NOT NULL,
    -- Every public URL the session had, in order: a reconnect may change it.
    public_urls   text[] NOT NULL DEFAULT '{}',
    started_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    request_count bigint NOT NULL DEFAULT 0
);
CREATE INDEX tunnel_sessions_started ON tunnel_sessions (started_at DESC);

CREATE TABLE tunnel_requests (
    id               bigserial PRIMARY KEY,
    session_id       uuid REFERENCES tunnel_sessions (id) ON DELETE SET NULL,
    received_at      timestamptz NOT NULL,
    method           text NOT NULL,
    -- Path plus query; the query reads `?[redacted]` unless capture was on.
    target           text NOT NULL,
    -- NULL when the API could not be reached (the caller got 502 from the proxy).
    status           smallint,
    duration_ms      bigint NOT NULL,
    request_bytes    bigint NOT NULL,
    response_bytes   bigint NOT NULL,
    -- [[name, value], ...] with sensitive values replaced by `[redacted]`.
    request_headers  jsonb NOT NULL,
    response_headers jsonb NOT NULL,
    -- Only with capture on, at most the configured cap; `*_complete` says whether it was cut.
    request_body     bytea,
    request_body_complete boolean NOT NULL DEFAULT false,
    response_body    bytea,
    error            text,
    replay_of        bigint REFERENCES tunnel_requests (id) ON DELETE SET NULL
);
