-- Executors talk to the server only over HTTP and may run on other machines
-- (a launcher starts them: a local process or a Slurm job). The server no
-- longer makes a checkout of its own, so the column that held its path now
-- holds the launcher's handle on the run's executor, which a restarted
-- server needs to find a remote executor again.
ALTER TABLE runs RENAME COLUMN workspace_path TO executor;

CREATE TRIGGER runs_executor_handle
BEFORE UPDATE OF executor ON runs
WHEN NEW.executor IS NOT NULL AND NOT (
    (NEW.executor GLOB 'process:[1-9]*' AND substr(NEW.executor, 9) NOT GLOB '*[^0-9]*')
    OR (NEW.executor GLOB 'slurm:[1-9]*' AND substr(NEW.executor, 7) NOT GLOB '*[^0-9]*')
)
BEGIN
    SELECT RAISE(ABORT, 'runs.executor must be process:<pid> or slurm:<job id>');
END;
