-- Executors talk to the server only over HTTP and may run on other machines
-- (a launcher starts them: a local process or a Slurm job). The launcher's
-- handle on a run's executor is kept, which a restarted server needs to
-- find a remote executor again. `workspace_path` (SPEC §6.3) stays, and
-- stays NULL: the server no longer makes a checkout of its own; the
-- executor fetches the commit into a directory of its own.
ALTER TABLE runs ADD COLUMN executor TEXT;

CREATE TRIGGER runs_executor_handle
BEFORE UPDATE OF executor ON runs
WHEN NEW.executor IS NOT NULL AND NOT (
    (NEW.executor GLOB 'process:[1-9]*' AND substr(NEW.executor, 9) NOT GLOB '*[^0-9]*')
    OR (NEW.executor GLOB 'slurm:[1-9]*' AND substr(NEW.executor, 7) NOT GLOB '*[^0-9]*')
)
BEGIN
    SELECT RAISE(ABORT, 'runs.executor must be process:<pid> or slurm:<job id>');
END;
