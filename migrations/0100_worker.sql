-- The worker's bookkeeping (issue 5).

-- Jobs whose effects are committed. Written in the same transaction as the effect, so a
-- redelivered message (worker killed before its ack, broker restart) never repeats it.
CREATE TABLE processed_jobs (
    job_id       uuid PRIMARY KEY,
    queue        text NOT NULL CHECK (queue IN ('builds', 'email', 'cleanup')),
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- The notice about a build's result is linked to its build: at most one per build, whatever the
-- number of retries or redeliveries (Lookit's issue #506 sent one per retry).
ALTER TABLE emails ADD COLUMN build_id uuid REFERENCES builds (id) ON DELETE SET NULL;
CREATE UNIQUE INDEX emails_one_notice_per_build ON emails (build_id) WHERE build_id IS NOT NULL;
