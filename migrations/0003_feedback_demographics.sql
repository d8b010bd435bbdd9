-- The two JSON:API resources of §7 the first migrations lacked: a participant's demographic data
-- (read-only through the API; each survey answer is kept as its own snapshot, newest last, as in
-- Lookit) and researchers' feedback on a response, which the participant reads.

CREATE TABLE demographics (
    id                      uuid PRIMARY KEY,
    pk                      bigserial UNIQUE NOT NULL,
    user_id                 uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    country                 text NOT NULL DEFAULT '',   -- ISO 3166 alpha-2
    state                   text NOT NULL DEFAULT '',
    density                 text NOT NULL DEFAULT '',   -- urban, suburban, rural
    languages_spoken_at_home text NOT NULL DEFAULT '',
    number_of_children      text NOT NULL DEFAULT '',
    child_birthdays         date[] NOT NULL DEFAULT '{}',
    number_of_guardians     text NOT NULL DEFAULT '',
    race_identification     text[] NOT NULL DEFAULT '{}',
    age                     text NOT NULL DEFAULT '',
    gender                  text NOT NULL DEFAULT '',
    education_level         text NOT NULL DEFAULT '',
    annual_income           text NOT NULL DEFAULT '',
    number_of_books         integer,
    additional_comments     text NOT NULL DEFAULT '',
    lookit_referrer         text NOT NULL DEFAULT '',
    extra                   jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX demographics_user ON demographics (user_id, created_at);

CREATE TABLE feedback (
    id            uuid PRIMARY KEY,
    pk            bigserial UNIQUE NOT NULL,
    response_id   uuid NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    researcher_id uuid NOT NULL REFERENCES users (id),
    comment       text NOT NULL CHECK (comment <> ''),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_response ON feedback (response_id, created_at);
