-- The live development loop (issue 8): the local folders linked to a study, which the running app
-- watches. A player folder change rebuilds the study with that folder as its player; protocol
-- folder changes update the study's structure.
CREATE TABLE study_links (
    study_id        uuid PRIMARY KEY REFERENCES studies (id) ON DELETE CASCADE,
    player_folder   text CHECK (player_folder LIKE '/%'),
    protocol_folder text CHECK (protocol_folder LIKE '/%'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    modified_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (player_folder IS NOT NULL OR protocol_folder IS NOT NULL)
);
