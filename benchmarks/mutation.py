"""Mutation testing of the modules that carry the engine's promises (not run in CI: too slow on 2 cores).

Each module is mutated by mutmut (small deliberate bugs: an operator, a constant, a string, a dropped
argument, one at a time) and checked with the few test files that exercise it; a mutant the tests do not
notice is a behaviour nobody checks. Survivors judged equivalent (no observable behaviour changes) are
listed, each with its reason, in ``benchmarks/mutation_equivalent.txt``; the script reads that list.

Install the tool into the environment that runs the tests (it is not a test dependency)::

    .venv/bin/pip install mutmut==3.8.1

Run (niced, one process: the machine is shared)::

    nice -n 15 .venv/bin/python benchmarks/mutation.py --module interpretation
    nice -n 15 .venv/bin/python benchmarks/mutation.py            # every module in MODULES, one after another
    nice -n 15 .venv/bin/python benchmarks/mutation.py --module scoring --show   # diffs of the survivors

Each module is copied with the tests into ``--workdir`` (default: a folder in the system temp dir), so the
checkout is never touched. mutmut runs each mutant only against the tests that call the mutated function,
forked from a server process that has already imported torch and pytest. Measured numbers and the commands
that gave them are in docs/development.md (*Mutation testing*).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = Path(__file__).resolve().parent / "mutation_equivalent.txt"
TESTS = "Testing/Python"

#: Module -> the test files that exercise it (kept few and fast: every mutant reruns the tests that reach it).
#: Any test file elsewhere may also notice a mutant; these are the ones run here.
MODULES = {
    "interpretation": ["test_interpretation.py", "test_scoring.py", "test_noise_reference.py"],
    "scoring": ["test_scoring.py", "test_interpretation.py", "test_noise_reference.py"],
    "preprocessing": ["test_preprocessing.py", "test_scoring.py"],
    "weights": ["test_weights.py"],
    "store": ["test_store.py"],
    "reading": ["test_reading.py"],
    "batch": ["test_batch_units.py"],
    "training": ["test_resume.py"],
    "dicom_writing": ["test_dicom_writing.py"],
}
#: Tests left out of a module's mutation run: too slow to rerun for every mutant, and nothing a mutation operator
#: makes would be caught by them alone.
DESELECT = {
    "scoring": ["test_scoring.py::test_memory_stays_bounded_for_long_int16_volume",
                "test_noise_reference.py::test_calibrate_command_fits_the_corpus_and_keeps_the_network"],
    "interpretation": ["test_noise_reference.py::test_calibrate_command_fits_the_corpus_and_keeps_the_network"],
}
#: Wall-clock limit of one test (pytest-timeout) in each module's run: an endless loop fails the test. Well
#: above the slowest mapped test on a busy 2-core machine.
TEST_TIMEOUT_S = {"training": 300, "store": 120, "batch": 120, "scoring": 120, "interpretation": 300}
DEFAULT_TEST_TIMEOUT_S = 60
#: Modules mutated only in some functions: training's resume path (writing and restoring a run's state, trimming
#: its log, building the optimiser and its schedule); the rest of training is checked by the slower end-to-end
#: tests in ``test_training.py``.
FUNCTIONS = {
    "training": ["_restore_checkpoint", "_save_checkpoint", "_truncate_log", "_optimiser"],
}
#: Runs of mutmut tried when its first pass over the tests (which maps tests to functions) fails.
STATS_ATTEMPTS = 3
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def source_file(module: str) -> str:
    """The file of engine module ``module`` relative to the repository root, e.g. ``DistilIQALib/quality/scoring.py``
    for ``scoring`` (modules sit in the engine's sub-packages; the names in ``MODULES`` stay the short ones)."""
    found = list((ROOT / "DistilIQALib").rglob(f"{module}.py"))
    if len(found) != 1:
        sys.exit(f"engine module {module} not found once under DistilIQALib/: {found}")
    return found[0].relative_to(ROOT).as_posix()


def dotted(module: str) -> str:
    """mutmut's prefix of the mutant names of ``module``: its dotted path, e.g. ``DistilIQALib.quality.scoring``."""
    return source_file(module)[:-len(".py")].replace("/", ".")


def read_equivalent() -> dict:
    """``mutant name -> reason`` from the equivalents file (``name | reason`` lines, ``#`` comments)."""
    equivalent = {}
    if EQUIVALENT_FILE.is_file():
        for line in EQUIVALENT_FILE.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition("|")
                equivalent[name.strip()] = reason.strip()
    return equivalent


def prepare(module: str, workdir: Path) -> Path:
    """A fresh copy of the package and the tests with a mutmut configuration for ``module``."""
    project = workdir / module
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "DistilIQALib", project / "DistilIQALib", ignore=ignore)
    shutil.copytree(ROOT / TESTS, project / TESTS, ignore=ignore)
    tests = ", ".join(f'"{TESTS}/{name}"' for name in MODULES[module])
    deselect = "".join(f', "--deselect", "{TESTS}/{name}"' for name in DESELECT.get(module, []))
    timeout = TEST_TIMEOUT_S.get(module, DEFAULT_TEST_TIMEOUT_S)
    (project / "pyproject.toml").write_text(f"""[tool.pytest.ini_options]
testpaths = ["{TESTS}"]
timeout = 900

[tool.mutmut]
source_paths = ["DistilIQALib/"]
only_mutate = ["{source_file(module)}"]
also_copy = ["Testing/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore", "--timeout", "{timeout}"{deselect}]
pytest_add_cli_args_test_selection = [{tests}]
process_isolation = "forkserver"
use_git_change_detection = false
# An endless loop is stopped by pytest-timeout (a test over its limit fails: the mutant is caught). mutmut's own
# limits (wall: 15 x (tests' time + constant); CPU: twice that) are left generous: each mutant's run also builds
# the fixtures (models scored, volumes simulated), which the tests' recorded time leaves out, and on a loaded
# machine a tight limit counts a slow surviving mutant as caught (seen with a 10 s constant).
timeout_constant = 60.0
""")
    return project


def run_module(module: str, workdir: Path, resume: bool = False, report_only: bool = False) -> tuple:
    project = workdir / module
    if report_only:
        return project, read_statuses(project, module), 0.0
    if not (resume and (project / "mutants").is_dir()):
        project = prepare(module, workdir)
    # a fixed hash seed keeps mutant names (their numbering) the same from run to run
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    environment.pop("PYTHONPATH", None)
    started = time.monotonic()
    mutmut = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())"]
    log = project / "mutmut.log"
    names = [f"{dotted(module)}.x_{function}__mutmut_*" for function in FUNCTIONS.get(module, [])]
    for _attempt in range(STATS_ATTEMPTS):
        with log.open("w") as stream:
            code = subprocess.call([*mutmut, "run", "--max-children", "1", *names], cwd=project, env=environment,
                                   stdout=stream, stderr=subprocess.STDOUT)
        # mutmut first runs the tests once to learn which tests reach which function; on a loaded machine that
        # pass has failed now and then (and passed when run again), stopping mutmut before any mutant ran.
        if code == 0 or "failed to collect stats" not in log.read_text(errors="replace"):
            break
    seconds = time.monotonic() - started
    if code != 0:
        sys.exit(f"mutmut failed for {module} (exit {code}); see {log}")
    return project, read_statuses(project, module), seconds


def read_statuses(project: Path, module: str) -> dict:
    """``mutant name -> status`` as mutmut recorded them (``not checked`` for those not run yet)."""
    from mutmut.stats import status_by_exit_code

    meta = project / "mutants" / f"{source_file(module)}.meta"
    if not meta.is_file():
        sys.exit(f"no mutation results for {module} in {project}")
    names = [f"{dotted(module)}.x_{function}__mutmut_*" for function in FUNCTIONS.get(module, [])]
    return {name: status_by_exit_code[exit_code]
            for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items()
            if not names or any(fnmatch.fnmatch(name, pattern) for pattern in names)}


def show(project: Path, name: str) -> str:
    command = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())", "show", name]
    return subprocess.run(command, cwd=project, capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="module(s) to mutate (default all)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "distiliqa-mutation")
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--report-only", action="store_true", help="print the results in --workdir, run nothing")
    parser.add_argument("--resume", action="store_true",
                        help="go on with an interrupted run in --workdir (the mutants not checked yet)")
    args = parser.parse_args()
    try:
        import mutmut  # noqa: F401
    except ImportError:
        sys.exit("mutmut is not installed: pip install mutmut==3.8.1")
    equivalent = read_equivalent()
    table = []
    for module in args.module or list(MODULES):
        project, statuses, seconds = run_module(module, args.workdir, args.resume, args.report_only)
        unchecked = [name for name, status in statuses.items() if status == "not checked"]
        statuses = {name: status for name, status in statuses.items() if status != "not checked"}
        killed = [name for name, status in statuses.items() if status in KILLED]
        alive = sorted(name for name in statuses if name not in killed)
        judged = [name for name in alive if name in equivalent]
        survived = [name for name in alive if name not in equivalent]
        counted = len(statuses) - len(judged)
        score = 100.0 * len(killed) / counted if counted else 100.0
        table.append((module, len(statuses), len(killed), len(judged), len(survived), score, seconds,
                      len(unchecked)))
        print(f"\n== {module}: {len(statuses)} mutants, {len(killed)} killed, {len(judged)} equivalent, "
              f"{len(survived)} survived ({score:.1f}% of non-equivalent killed, {seconds:.0f} s)"
              + (f"; {len(unchecked)} not checked (run interrupted)" if unchecked else ""), flush=True)
        for name in judged:
            print(f"   equivalent {name}: {equivalent[name]}")
        for name in survived:
            print(f"   SURVIVED   {name} ({statuses[name]})")
            if args.show:
                print(show(project, name))
    print("\n| module | mutants | killed | equivalent | survived | killed of non-equivalent | not checked |")
    print("|---|---|---|---|---|---|---|")
    for module, total, killed, judged, survived, score, _seconds, unchecked in table:
        print(f"| {module} | {total} | {killed} | {judged} | {survived} | {score:.1f}% | {unchecked} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
