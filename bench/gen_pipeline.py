#!/usr/bin/env python3
"""Writes a benchmark pipeline to <workspace>/.quire/ci.fnl.

  gen_pipeline.py jobs WORKSPACE N   N jobs with a mix of dependencies
  gen_pipeline.py sh WORKSPACE N     one job running (sh ["true"]) N times
  gen_pipeline.py parallel WORKSPACE N
                                     N independent jobs running (sh ["sleep" "1"])
                                     and a job `join` depending on all of them
"""
import pathlib
import sys


def jobs_pipeline(n):
    lines = ["(local ci (require :quire.ci))", ""]
    for i in range(n):
        if i == 0 or i % 7 == 0:
            inputs = ":quire/push"
        else:
            inputs = " ".join(f":job-{j}" for j in sorted({i - 1, i // 2}))
        lines.append(f"(ci.job :job-{i} [{inputs}]")
        lines.append("  (fn [{: sh : jobs}]")
        lines.append('    (sh ["true"])')
        lines.append(f"    {{:n {i} :name \"job-{i}\"}}))")
        lines.append("")
    return "\n".join(lines)


def sh_pipeline(n):
    return "\n".join([
        "(local ci (require :quire.ci))",
        "(ci.job :loop [:quire/push]",
        "  (fn [{: sh}]",
        f"    (for [i 1 {n}]",
        '      (sh ["true"]))))',
        "",
    ])


def parallel_pipeline(n):
    lines = ["(local ci (require :quire.ci))", ""]
    for i in range(n):
        lines.append(f"(ci.job :sleep-{i} [:quire/push]")
        lines.append("  (fn [{: sh}]")
        lines.append('    (sh ["sleep" "1"])))')
        lines.append("")
    inputs = " ".join(f":sleep-{i}" for i in range(n))
    lines.append(f"(ci.job :join [{inputs}]")
    lines.append("  (fn [{: sh}]")
    lines.append('    (sh ["true"])))')
    lines.append("")
    return "\n".join(lines)


def main():
    kind, workspace, n = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
    text = {"jobs": jobs_pipeline, "sh": sh_pipeline, "parallel": parallel_pipeline}[kind](n)
    (workspace / ".quire").mkdir(parents=True, exist_ok=True)
    (workspace / ".quire" / "ci.fnl").write_text(text)


if __name__ == "__main__":
    main()
