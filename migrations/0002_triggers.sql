-- What started each run, the commit it is for as people read it, and when
-- each schedule last fired.

-- `push` for runs from the first release; `manual` is `quire ci retrigger`.
ALTER TABLE runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'push'
    CHECK (trigger IN ('push', 'schedule', 'manual'));
-- When the schedule fired; only scheduled runs have it.
ALTER TABLE runs ADD COLUMN scheduled_at_ms INTEGER
    CHECK ((scheduled_at_ms IS NOT NULL) = (trigger = 'schedule'));
-- The commit's subject line and author, read from git when the run is
-- queued (NULL when git could not tell); bounded, since a commit message
-- is whatever the pusher wrote.
ALTER TABLE runs ADD COLUMN subject TEXT CHECK (subject IS NULL OR length(subject) <= 200);
ALTER TABLE runs ADD COLUMN author TEXT CHECK (author IS NULL OR length(author) <= 200);

-- The last tick each schedule fired for: a server that was down fires a
-- missed schedule once at start, not once per missed tick.
CREATE TABLE schedule_ticks (
    repo         TEXT NOT NULL CHECK (repo GLOB '*?.git'),
    ref_name     TEXT NOT NULL CHECK (ref_name GLOB 'refs/?*'),
    cron         TEXT NOT NULL,
    fired_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (repo, ref_name, cron)
) WITHOUT ROWID;
