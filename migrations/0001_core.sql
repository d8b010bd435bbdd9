-- Core records of Lookit (domain reference §6) plus what Lookit Local adds: builds as first-class
-- records, an email outbox and a job outbox (so no job is lost when the broker is down).

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    pk             bigserial UNIQUE NOT NULL,
    username       text NOT NULL,               -- an email address
    given_name     text NOT NULL DEFAULT '',
    family_name    text NOT NULL DEFAULT '',
    password_hash  text,                        -- argon2 PHC string; NULL: cannot log in
    is_researcher  boolean NOT NULL DEFAULT false,
    is_staff       boolean NOT NULL DEFAULT false,
    email_preferences jsonb NOT NULL DEFAULT '{}',
    totp_secret    text,                        -- base32, 32 chars
    totp_activated boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Usernames are emails and compare case-insensitively.
CREATE UNIQUE INDEX users_username_ci ON users (lower(username));

CREATE TABLE labs (
    id               uuid PRIMARY KEY,
    pk               bigserial UNIQUE NOT NULL,
    name             text NOT NULL,
    institution      text NOT NULL DEFAULT '',
    contact_email    text NOT NULL DEFAULT '',
    approved_to_test boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lab_researchers (
    lab_id   uuid NOT NULL REFERENCES labs (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    is_admin boolean NOT NULL DEFAULT false,
    PRIMARY KEY (lab_id, user_id)
);

CREATE TABLE studies (
    id          uuid PRIMARY KEY,
    pk          bigserial UNIQUE NOT NULL,
    name        text NOT NULL,
    lab_id      uuid NOT NULL REFERENCES labs (id),
    creator_id  uuid REFERENCES users (id),
    study_type  smallint NOT NULL DEFAULT 1 CHECK (study_type IN (1, 2, 3)),
    state       text NOT NULL DEFAULT 'created' CHECK (state IN
                ('created', 'submitted', 'approved', 'active', 'paused', 'deactivated',
                 'rejected', 'retracted', 'archived')),
    public      boolean NOT NULL DEFAULT false,
    structure   jsonb NOT NULL DEFAULT '{"frames": {}, "sequence": []}',
    metadata    jsonb NOT NULL DEFAULT '{}',   -- player_repo_url, last_known_player_sha
    created_at  timestamptz NOT NULL DEFAULT now(),
    modified_at timestamptz NOT NULL DEFAULT now()
);

-- Who administers a study (build results are mailed to them).
CREATE TABLE study_admins (
    study_id uuid NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (study_id, user_id)
);

CREATE TABLE study_logs (
    id         bigserial PRIMARY KEY,
    study_id   uuid NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    user_id    uuid REFERENCES users (id),
    action     text NOT NULL,
    extra      jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX study_logs_study ON study_logs (study_id, created_at);

CREATE TABLE children (
    id         uuid PRIMARY KEY,
    pk         bigserial UNIQUE NOT NULL,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    given_name text NOT NULL,
    birthday   date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE responses (
    id                       uuid PRIMARY KEY,
    pk                       bigserial UNIQUE NOT NULL,
    study_id                 uuid NOT NULL REFERENCES studies (id),
    child_id                 uuid NOT NULL REFERENCES children (id),
    completed                boolean NOT NULL DEFAULT false,
    completed_consent_frame  boolean NOT NULL DEFAULT false,
    exp_data                 jsonb NOT NULL DEFAULT '{}',
    conditions               jsonb NOT NULL DEFAULT '{}',
    sequence                 jsonb NOT NULL DEFAULT '[]',
    global_event_timings     jsonb NOT NULL DEFAULT '[]',
    is_preview               boolean NOT NULL DEFAULT false,
    recording_method         text NOT NULL DEFAULT 'pipe',
    created_at               timestamptz NOT NULL DEFAULT now(),
    modified_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX responses_study ON responses (study_id);
CREATE INDEX responses_child ON responses (child_id);

CREATE TABLE videos (
    id                 uuid PRIMARY KEY,
    pk                 bigserial UNIQUE NOT NULL,
    full_name          text NOT NULL UNIQUE,
    pipe_name          text NOT NULL,
    pipe_numeric_id    bigint,
    s3_timestamp       timestamptz NOT NULL,
    frame_id           text NOT NULL,
    study_id           uuid NOT NULL REFERENCES studies (id),
    response_id        uuid NOT NULL REFERENCES responses (id),
    is_consent_footage boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE consent_rulings (
    id          bigserial PRIMARY KEY,
    response_id uuid NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    action      text NOT NULL CHECK (action IN ('accepted', 'rejected', 'pending')),
    arbiter_id  uuid REFERENCES users (id),
    comments    text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_rulings_response ON consent_rulings (response_id, created_at);

-- A study build (§2). At most one unfinished build per study, enforced by the index below.
CREATE TABLE builds (
    id              uuid PRIMARY KEY,
    study_id        uuid NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
    requested_by    uuid REFERENCES users (id),
    player_repo     text NOT NULL,      -- repository URL, file:// URL or local folder
    player_ref      text NOT NULL,      -- branch or sha asked for
    player_sha      text,               -- resolved commit (NULL until resolved; local folders: content hash)
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage           text,               -- current or failing stage
    cache_key       text,
    cache_hit       boolean NOT NULL DEFAULT false,
    log             text NOT NULL DEFAULT '',
    output_location text,
    error           text,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE UNIQUE INDEX builds_one_active_per_study ON builds (study_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX builds_cache_key ON builds (cache_key) WHERE status = 'succeeded';

-- Email outbox: every email is a row first; the worker renders and sends (or keeps it locally,
-- where the dashboard shows it like a mail catcher).
CREATE TABLE emails (
    id            uuid PRIMARY KEY,
    template      text NOT NULL,
    context       jsonb NOT NULL DEFAULT '{}',
    to_addresses  text[] NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',  -- e.g. List-Unsubscribe for participant mail
    subject       text,
    body_text     text,
    body_html     text,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'kept', 'failed')),
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz
);

-- Jobs written in the same transaction as the request's own changes; a relay publishes them with
-- publisher confirms and then sets published_at.
CREATE TABLE job_outbox (
    id           uuid PRIMARY KEY,       -- the job id carried by the message
    queue        text NOT NULL CHECK (queue IN ('builds', 'email', 'cleanup')),
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX job_outbox_unpublished ON job_outbox (created_at) WHERE published_at IS NULL;
