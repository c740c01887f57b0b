"""Mutation testing of the core with mutmut: run it, then count killed and surviving mutants per module.

    python tools/mutation.py                 # all of MUTANTS below, from scratch (what `make mutation` runs)
    python tools/mutation.py --only methods  # one module's mutants (a prefix of the names in MUTANTS)
    python tools/mutation.py --report-only   # the table of the last run, without running again
    python tools/mutation.py --diffs         # ... with each survivor's diff

mutmut (configured under ``[tool.mutmut]`` in pyproject.toml) copies ``src/`` into ``mutants/``,
rewrites each function of the modules it mutates into its variants, records which of the selected
tests call which function, and then runs, for every mutant, the tests that call its function
(``pytest -x``): a test failure kills the mutant. The score of a module is the share of its mutants
killed (a timeout counts as killed: the mutant made the tests hang). Results: docs/testing.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What is mutated: every function of the core modules, and of sweep.py and trainer.py the planning
# and aggregation of a sweep and the construction of the method (their other functions run training
# or write files, and their tests take minutes).
MUTANTS = {
    "objectives": ["softintrovae.objectives.*"],
    "methods": ["softintrovae.methods.*"],
    "likelihood": ["softintrovae.likelihood.*"],
    "metrics/toy2d": ["softintrovae.metrics.toy2d.*"],
    "sweep (planning)": [
        f"softintrovae.sweep.x_{name}__mutmut_*"
        for name in ("paper_grid", "parse_grid", "expand_grid", "as_configurations", "run_name", "plan", "aggregate", "best_per_metric")
    ],
    "trainer (method construction)": ["softintrovae.trainer.x_build_training_method__mutmut_*"],
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not run"}


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()})"


def patterns_of(modules: list[str]) -> list[str]:
    return [p for module in modules for p in MUTANTS[module]]


def run_mutmut(patterns: list[str], workers: int) -> None:
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # from scratch: no result of an older source or test survives
    (ROOT / "mutants").mkdir()
    mutmut = Path(sys.executable).with_name("mutmut")
    log = ROOT / "mutants" / "mutmut-run.log"
    with open(log, "w") as out:
        code = subprocess.call([str(mutmut), "run", "--max-children", str(workers), *patterns], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"mutmut failed with exit status {code}; its output: {log}")


def results(patterns: list[str]) -> dict[str, int | None]:
    """Exit code of every mutant matching ``patterns``, from mutmut's result files."""
    codes: dict[str, int | None] = {}
    for meta in sorted((ROOT / "mutants" / "src").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                codes[name] = code
    return codes


def module_of(name: str, modules: list[str]) -> str:
    return next(m for m in modules if any(fnmatch.fnmatch(name, p) for p in MUTANTS[m]))


def report(modules: list[str], diffs: bool) -> None:
    codes = results(patterns_of(modules))
    if not codes:
        sys.exit("no mutation results: run without --report-only first")
    counts = {m: Counter() for m in modules}
    for name, code in codes.items():
        counts[module_of(name, modules)][STATUS.get(code, "suspicious")] += 1
    print("| module | mutants tested | killed | timeout | survived | no tests | score | not run |")
    print("|---|---|---|---|---|---|---|---|")
    total = Counter()
    for module, c in counts.items():
        total += c
        print(row(module, c))
    print(row("**all**", total))
    survivors = sorted(n for n, code in codes.items() if STATUS.get(code, "suspicious") not in ("killed", "timeout", "not run"))
    print(f"\nnot killed ({len(survivors)}):")
    for name in survivors:
        print(f"  {STATUS.get(codes[name], 'suspicious'):9} {name}")
        if diffs:
            from mutmut.mutation.diff_apply import get_diff_for_mutant

            os.chdir(ROOT)
            print("    " + get_diff_for_mutant(name).replace("\n", "\n    "))


def row(module: str, c: Counter) -> str:
    """One table row; the score counts the mutants tested (a run cut short leaves some not run)."""
    n = sum(c.values()) - c["not run"]
    dead = c["killed"] + c["timeout"]
    other = n - dead - c["survived"] - c["no tests"]
    score = f"{100 * dead / n:.1f} %" if n else "–"
    extra = f" (+{other} other)" if other else ""
    return f"| {module} | {n} | {c['killed']} | {c['timeout']} | {c['survived']}{extra} | {c['no tests']} | {score} | {c['not run']} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(MUTANTS), help="only this module's mutants (repeatable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="mutants tested at once (default: one per CPU)")
    parser.add_argument("--report-only", action="store_true", help="report the last run's results")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = parser.parse_args()
    modules = args.only or list(MUTANTS)
    print(f"machine: {machine()}")
    if not args.report_only:
        start = time.monotonic()
        run_mutmut(patterns_of(modules), args.workers)
        print(f"mutmut ran {time.monotonic() - start:.0f} s with {args.workers} workers")
    report(modules, args.diffs)


if __name__ == "__main__":
    main()
