-- Quire's schema. The state machines of docs/CI-STATE.md are enforced here,
-- not only in code: a row in an impossible shape cannot be written.

-- Why a run failed. A table rather than a CHECK list so that a later
-- migration can add a kind with one INSERT; readers must treat the set as
-- open.
CREATE TABLE failure_kinds (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;

INSERT INTO failure_kinds (name) VALUES
    ('pipeline-failure'),
    ('process-crashed'),
    ('orphaned'),
    ('timeout'),
    ('canceled');

CREATE TABLE runs (
    id             TEXT PRIMARY KEY CHECK (length(id) = 36),
    repo           TEXT NOT NULL CHECK (repo GLOB '*?.git'),
    ref_name       TEXT NOT NULL CHECK (ref_name GLOB 'refs/?*'),
    sha            TEXT NOT NULL CHECK (length(sha) BETWEEN 40 AND 64 AND sha NOT GLOB '*[^0-9a-f]*'),
    previous_sha   TEXT CHECK (previous_sha IS NULL OR length(previous_sha) BETWEEN 40 AND 64),
    pushed_at_ms   INTEGER NOT NULL,
    state          TEXT NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'active', 'complete', 'failed', 'superseded')),
    failure_kind   TEXT REFERENCES failure_kinds (name),
    queued_at_ms   INTEGER NOT NULL,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER,
    -- Where the checkout was materialized (removed after the run).
    workspace_path TEXT,
    -- SHA-256 of the run token, hex; the token itself is never stored.
    token_hash     TEXT UNIQUE CHECK (token_hash IS NULL OR length(token_hash) = 64),

    CHECK (state <> 'pending'  OR (started_at_ms IS NULL AND finished_at_ms IS NULL)),
    CHECK (state <> 'active'   OR (started_at_ms IS NOT NULL AND finished_at_ms IS NULL)),
    CHECK (state <> 'complete' OR (started_at_ms IS NOT NULL AND finished_at_ms IS NOT NULL)),
    CHECK (state NOT IN ('failed', 'superseded') OR finished_at_ms IS NOT NULL),
    -- A failure kind exactly when the run failed.
    CHECK ((state = 'failed') = (failure_kind IS NOT NULL)),
    CHECK (started_at_ms IS NULL OR started_at_ms >= queued_at_ms),
    CHECK (finished_at_ms IS NULL OR finished_at_ms >= coalesce(started_at_ms, queued_at_ms))
);

CREATE INDEX runs_by_repo ON runs (repo, id DESC);
CREATE INDEX runs_queue ON runs (state, queued_at_ms) WHERE state IN ('pending', 'active');
CREATE INDEX runs_by_ref ON runs (repo, ref_name, id DESC);

-- Timestamps are stamped at most once.
CREATE TRIGGER runs_stamp_once
BEFORE UPDATE OF queued_at_ms, started_at_ms, finished_at_ms ON runs
WHEN OLD.queued_at_ms IS NOT NEW.queued_at_ms
  OR (OLD.started_at_ms IS NOT NULL AND OLD.started_at_ms IS NOT NEW.started_at_ms)
  OR (OLD.finished_at_ms IS NOT NULL AND OLD.finished_at_ms IS NOT NEW.finished_at_ms)
BEGIN
    SELECT RAISE(ABORT, 'run timestamps are stamped at most once');
END;

-- Only the transitions of docs/CI-STATE.md.
CREATE TRIGGER runs_transitions
BEFORE UPDATE OF state ON runs
WHEN OLD.state IS NOT NEW.state
 AND (OLD.state, NEW.state) NOT IN (
        VALUES ('pending', 'active'), ('pending', 'failed'), ('pending', 'superseded'),
               ('active', 'complete'), ('active', 'failed'), ('active', 'superseded'))
BEGIN
    SELECT RAISE(ABORT, 'illegal run state transition');
END;

CREATE TABLE jobs (
    run_id         TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    job_id         TEXT NOT NULL CHECK (job_id <> '' AND job_id NOT GLOB '*[^A-Za-z0-9_-]*'),
    -- Order of the job in the run (its first event), i.e. pipeline order.
    position       INTEGER NOT NULL CHECK (position >= 0),
    state          TEXT NOT NULL
                   CHECK (state IN ('pending', 'active', 'complete', 'failed', 'skipped', 'aborted')),
    -- The exit code of the job's last command, if it ran any.
    exit_code      INTEGER,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER,
    PRIMARY KEY (run_id, job_id),

    CHECK (state <> 'pending' OR (started_at_ms IS NULL AND finished_at_ms IS NULL)),
    CHECK (state <> 'active'  OR (started_at_ms IS NOT NULL AND finished_at_ms IS NULL)),
    CHECK (state NOT IN ('complete', 'failed', 'aborted')
           OR (started_at_ms IS NOT NULL AND finished_at_ms IS NOT NULL)),
    CHECK (state <> 'skipped' OR (started_at_ms IS NULL AND finished_at_ms IS NOT NULL)),
    CHECK (finished_at_ms IS NULL OR started_at_ms IS NULL OR finished_at_ms >= started_at_ms)
) WITHOUT ROWID;

CREATE TABLE sh_events (
    run_id         TEXT NOT NULL,
    job_id         TEXT NOT NULL,
    -- n of the command's log, jobs/<job-id>/sh-<n>.log.
    seq            INTEGER NOT NULL CHECK (seq >= 1),
    cmd            TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    exit_code      INTEGER,
    PRIMARY KEY (run_id, job_id, seq),
    FOREIGN KEY (run_id, job_id) REFERENCES jobs (run_id, job_id) ON DELETE CASCADE,

    -- A command either finished (both set) or was cut off (neither).
    CHECK ((finished_at_ms IS NULL) = (exit_code IS NULL)),
    CHECK (finished_at_ms IS NULL OR finished_at_ms >= started_at_ms)
) WITHOUT ROWID;
