"""Mutation check of the security code: flip each check, run its tests, report what survives.

Run by hand from the repo root (not in CI: it runs the test files once per mutant)::

    .venv/bin/python bench/mutation/run_mutations.py --rev HEAD \\
        --module attest/core/identity.py --module attest/core/quote.py \\
        --output docs/mutation.md

Without ``--module`` every security module is mutated (``DEFAULT_MODULES``). The sites and
operators are described in ``mutants.py``: only functions that raise an AttestationError
subclass, record failures or are named like checks are touched, one change per mutant.

How a mutant is run. The working tree is shared with other engineers, so it is never modified:
the sources are copied once into a temporary directory (``--rev REV``: that commit, via ``git
archive``; default: the working tree as it is, minus .git/.venv/caches), one copy per job. A
mutant is written into its copy's file with a new mtime (so the compiled ``.pyc`` of the
original is not used; ``PYTHONDONTWRITEBYTECODE`` keeps the mutant from being cached), the
module's mapped test files run with ``pytest -x -q -p no:cacheprovider`` under a timeout
(``PYTHONPATH`` points at the copy, also for subprocesses the tests start), then the original
bytes and mtime are restored. The unmutated tests run first (the baseline): a module whose
baseline fails is not mutated, since every mutant would look killed.

Results: ``killed`` (a test failed; the first failing test is recorded), ``survived`` (all mapped
tests passed: a test gap, or an equivalent mutant), ``timeout`` (over ``--timeout``; counted as
detected but listed separately). The markdown report lists every mutant (file:line, change,
result, seconds) and the survivors. Hand-written notes between ``<!-- notes -->`` and
``<!-- /notes -->`` in an existing report are kept when it is rewritten.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mutants import Mutant, error_classes, find_mutants
from report import write_report

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_MODULES = [
    "attest/core/identity.py", "attest/core/ek.py", "attest/core/ek_template.py",
    "attest/core/quote.py", "attest/core/freshness.py", "attest/core/appraisal.py",
    "attest/core/policy.py", "attest/core/credential.py", "attest/core/eventlog/__init__.py",
    "attest/core/eventlog/parse.py", "attest/core/eventlog/replay.py",
    "attest/core/eventlog/appraise.py", "attest/core/eventlog/model.py",
    "attest/service/registrar.py", "attest/service/verifier.py",
]
# Fast, pure tests first: with -x the first failure ends the run.
_SERVICE = ["tests/attest/test_attacks_enrollment.py", "tests/attest/test_attacks_service.py",
            "tests/attest/test_attacks_review.py", "tests/attest/test_next_challenge.py",
            "tests/e2e/test_clock_rules.py",
            "tests/attest/test_state_events.py", "tests/attest/test_node_ack.py",
            "tests/attest/test_protocol_swtpm.py"]
_EVENTLOG = ["tests/attest/test_eventlog.py", "tests/attest/test_eventlog_fuzz.py",
             "tests/attest/test_eventlog_service.py"]
TESTS: dict[str, list[str]] = {
    "attest/core/identity.py": ["tests/attest/test_ak_attributes.py",
                                "tests/attest/test_attacks_service.py"],
    "attest/core/ek.py": ["tests/attest/test_ek.py", "tests/attest/test_ek_template.py",
                          "tests/attest/test_attacks_service.py"],
    "attest/core/ek_template.py": ["tests/attest/test_ek_template.py", "tests/attest/test_ek.py"],
    "attest/core/quote.py": ["tests/attest/test_quote_mutations.py", "tests/attest/test_quote.py",
                             "tests/attest/test_attacks_service.py"],
    "attest/core/freshness.py": ["tests/attest/test_freshness.py",
                                 "tests/attest/test_attacks_service.py",
                                 "tests/e2e/test_clock_rules.py"],
    "attest/core/appraisal.py": ["tests/attest/test_eventlog_service.py",
                                 "tests/attest/test_attacks_service.py"],
    "attest/core/policy.py": ["tests/attest/test_policy.py", "tests/attest/test_attacks_service.py",
                              "tests/attest/test_node_ack.py"],
    "attest/core/credential.py": ["tests/attest/test_credential.py",
                                  "tests/attest/test_attacks_service.py"],
    "attest/core/eventlog/__init__.py": _EVENTLOG,
    "attest/core/eventlog/parse.py": _EVENTLOG,
    "attest/core/eventlog/replay.py": _EVENTLOG,
    "attest/core/eventlog/appraise.py": _EVENTLOG,
    "attest/core/eventlog/model.py": _EVENTLOG,
    "attest/service/registrar.py": ["tests/attest/test_ak_attributes.py", *_SERVICE],
    "attest/service/verifier.py": _SERVICE,
    "attest/agent.py": ["tests/attest/test_agent_challenge.py",
                        "tests/attest/test_agent_backoff.py",
                        "tests/attest/test_protocol_swtpm.py"],
}
DEFAULT_TESTS = [
    "tests/attest/test_quote.py", "tests/attest/test_ek.py", "tests/attest/test_ek_template.py",
    "tests/attest/test_credential.py", *_EVENTLOG, "tests/attest/test_policy.py",
    "tests/attest/test_ak_attributes.py", *_SERVICE,
]
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                      ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                      "node_modules")


@dataclass
class Outcome:
    mutant: Mutant
    result: str  # killed | survived | timeout
    seconds: float
    killed_by: str = ""


@dataclass
class ModuleRun:
    path: str
    tests: list[str]
    missing_tests: list[str]
    baseline_seconds: float = 0.0
    baseline_ok: bool = True
    baseline_output: str = ""
    baseline_summary: str = ""  # pytest's last line: skipped tests kill nothing
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


# -- the copies ----------------------------------------------------------------------------------

def make_copy(rev: str | None, dest: Path) -> None:
    if rev is None:
        shutil.copytree(REPO, dest, ignore=_COPY_IGNORE, symlinks=True)
    else:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # Compiled once, so that each pytest run compiles only the mutated module.
    subprocess.run([str(PYTHON), "-m", "compileall", "-q", "attest", "admission", "mec_api",
                    "keys", "umec", "tests"], cwd=dest, check=False, capture_output=True)


def source_label(rev: str | None) -> str:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev or "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if rev is not None:
        return f"`{rev}` ({head})"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"working tree at {head}" + (" with uncommitted changes" if dirty else "")


# -- running pytest ------------------------------------------------------------------------------

_RUNNING: set[int] = set()  # process groups of the pytest runs in flight


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT: end the pytest runs in flight, then unwind (removing the copies)."""
    for pgid in list(_RUNNING):
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def run_pytest(copy: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """(``passed``/``failed``/``timeout``, seconds, output) of the tests in ``copy``."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1",
               PYTHONHASHSEED="0")
    cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _RUNNING.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session holds pytest and what it started
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - start, out
    finally:
        _RUNNING.discard(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return ("passed" if proc.returncode == 0 else "failed"), time.monotonic() - start, out


def last_line(output: str) -> str:
    lines = [ln.strip(" =") for ln in output.splitlines() if ln.strip()]
    return lines[-1][:160] if lines else "(no output)"


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return last_line(output)


@contextmanager
def mutated(copy: Path, mutant: Mutant, serial: int) -> Iterator[None]:
    path = copy / mutant.path
    original = path.read_bytes()
    stat = path.stat()
    path.write_bytes(mutant.apply(original))
    bumped = stat.st_mtime_ns + (1000 + serial) * 1_000_000_000
    os.utime(path, ns=(bumped, bumped))
    try:
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def run_mutant(copies: queue.Queue[Path], mutant: Mutant, serial: int, tests: list[str],
               timeout: float) -> Outcome:
    copy = copies.get()
    try:
        with mutated(copy, mutant, serial):
            status, seconds, out = run_pytest(copy, tests, timeout)
    finally:
        copies.put(copy)
    result = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
    outcome = Outcome(mutant, result, seconds, first_failure(out) if status == "failed" else "")
    print(f"  {mutant.path}:{mutant.line} {result:8} {seconds:6.1f}s  {mutant.change}",
          flush=True)
    return outcome


# -- one module ----------------------------------------------------------------------------------

def tests_for(module: str, root: Path, override: list[str] | None) -> tuple[list[str], list[str]]:
    wanted = override or TESTS.get(module, DEFAULT_TESTS)
    present = [t for t in wanted if (root / t).exists()]
    return present, [t for t in wanted if t not in present]


def run_module(module: str, copies: queue.Queue[Path], root: Path, args: argparse.Namespace,
               errors: set[str]) -> ModuleRun:
    tests, missing = tests_for(module, root, args.tests)
    run = ModuleRun(module, tests, missing)
    mutants = find_mutants(root, module, errors)[:args.limit or None]
    print(f"{module}: {len(mutants)} mutants, tests {' '.join(tests)}", flush=True)
    start = time.monotonic()
    status, run.baseline_seconds, out = run_pytest(root, tests, args.timeout or 1800)
    run.baseline_summary = last_line(out)
    print(f"  baseline: {run.baseline_summary}", flush=True)
    if status != "passed":
        run.baseline_ok, run.baseline_output = False, out[-3000:]
        print(f"  baseline {status}: not mutated\n{out[-1500:]}", flush=True)
        return run
    timeout = args.timeout or max(60.0, 3 * run.baseline_seconds + 30)
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(run_mutant, copies, m, i, tests, timeout)
                   for i, m in enumerate(mutants)]
        run.outcomes = [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    run.seconds = time.monotonic() - start
    return run


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--module", action="append", help="a file under attest/ (repeatable); "
                   "default: every security module")
    p.add_argument("--tests", action="append", help="test files to run instead of the mapping")
    p.add_argument("--limit", type=int, default=0, help="at most N mutants per module")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    p.add_argument("--timeout", type=float, default=0,
                   help="seconds per mutant (default: 3x the baseline + 30 s, at least 60 s)")
    p.add_argument("--rev", help="mutate this commit (git archive) instead of the working tree")
    p.add_argument("--output", type=Path, help="markdown report, e.g. docs/mutation.md")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    modules = args.module or DEFAULT_MODULES
    started, load_before = datetime.now(UTC), os.getloadavg()
    source = source_label(args.rev)  # before the run: HEAD may move meanwhile
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="umec-mutation-"))
    try:
        shared = REPO.parent / "shared"  # test fixtures live in ../shared seen from the repo
        if shared.is_dir():
            (tmp / "shared").symlink_to(shared)
        root = tmp / "copy0"
        make_copy(args.rev, root)
        modules = [m for m in modules if (root / m).exists()]
        errors = error_classes(root / "attest")
        if args.list:
            for m in modules:
                for mut in find_mutants(root, m, errors):
                    print(f"{mut.path}:{mut.line}\t{mut.function}\t{mut.change}")
            return 0
        copies: queue.Queue[Path] = queue.Queue()
        copies.put(root)
        for j in range(1, max(1, args.jobs)):
            make_copy(args.rev, tmp / f"copy{j}")
            copies.put(tmp / f"copy{j}")
        runs = [run_module(m, copies, root, args, errors) for m in modules]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "command": " ".join(["python", "bench/mutation/run_mutations.py", *argv]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "source": source,
        "machine": (f"nproc {os.cpu_count()}, load average "
                    f"{'/'.join(f'{x:.2f}' for x in load_before)} before, "
                    f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} after; "
                    f"Python {platform.python_version()}, --jobs {args.jobs}"),
        "runtime": f"{time.monotonic() - t0:.0f} s",
    }
    survivors = sum(o.result == "survived" for r in runs for o in r.outcomes)
    print(f"done in {meta['runtime']}: {survivors} survivors", flush=True)
    if args.output:
        write_report(args.output, runs, meta)
        print(f"report: {args.output}")
    return 1 if survivors or not all(r.baseline_ok for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
