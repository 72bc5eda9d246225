#!/usr/bin/env python3
"""Push-to-first-sh_started latency on an idle server.

  push_latency.py QUIRE_BIN PUSHES [CONFIG]

CONFIG, when given, is written as the root's config.fnl (e.g. to run
through the Slurm launcher; the server inherits SLURM_CONF).

Starts `quire serve` on a temporary root and a free loopback port, creates a
repository, then pushes PUSHES commits one after the other. For each, the
latency is from just before `git push` starts to the `at_ms` of the run's
first `sh_started` event (both on this machine's wall clock). Prints each
figure and the median.
"""
import json
import os
import pathlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

PIPELINE = """(local ci (require :quire.ci))
(ci.job :first [:quire/push] (fn [{: sh}] (sh ["true"])))
"""


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def finished(db, run):
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT state FROM runs WHERE id = ?", (run,)).fetchone()
    except sqlite3.Error:
        return None
    return True if row and row[0] in ("complete", "failed", "superseded") else None


def first_sh_started(events):
    try:
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "sh_started":
                return event["at_ms"]
    except (OSError, ValueError):
        return None
    return None


def main():
    quire, pushes = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp, "root")
        work = pathlib.Path(tmp, "work")
        subprocess.run([quire, "--root", root, "repo", "new", "bench.git"], check=True, capture_output=True)
        if len(sys.argv) > 3:
            (root / "config.fnl").write_text(sys.argv[3])
        server = subprocess.Popen([quire, "--root", root, "serve", "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=open(os.environ.get("PUSH_BENCH_LOG", os.devnull), "w"), text=True)
        try:
            line = server.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"quire serve did not start: {line!r}")
            work.mkdir()
            git(work, "init", "-q", "-b", "main")
            git(work, "config", "user.email", "bench@localhost")
            git(work, "config", "user.name", "bench")
            git(work, "remote", "add", "origin", str(root / "repos" / "bench.git"))
            (work / ".quire").mkdir()
            (work / ".quire" / "ci.fnl").write_text(PIPELINE)
            runs_dir = root / "runs" / "bench.git"
            latencies = []
            for i in range(pushes):
                git(work, "add", "-A")
                git(work, "commit", "-q", "--allow-empty", "-m", f"push {i}")
                before = set(os.listdir(runs_dir)) if runs_dir.exists() else set()
                start_ms = time.time() * 1000
                git(work, "push", "-q", "origin", "HEAD:main")
                run = wait_for("the run directory",
                               lambda: next(iter(set(os.listdir(runs_dir)) - before), None) if runs_dir.exists() else None)
                at_ms = wait_for("the first sh_started", lambda: first_sh_started(runs_dir / run / "events.jsonl"),
                                 timeout=120)
                latencies.append(at_ms - start_ms)
                # Wait for the run to be recorded so every push finds the
                # server idle.
                wait_for("the run to finish", lambda: finished(root / "quire.db", run), timeout=120)
            print("push latencies (ms):", " ".join(f"{x:.0f}" for x in latencies))
            print(f"{statistics.median(latencies):.1f}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
