"""py-spy around one benchmark phase, and a summary of where the webhook's CPU went.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;… count``, a frame being
``function (file:line)``). Sampling is of running threads only (no ``--idle``): the question
is where the webhook's *CPU* goes; time spent waiting for the registry shows up as the gap
between wall time and webhook CPU time, which the benchmark reports beside the profile.

Two views: *inclusive* shares of the named steps of a review (a sample counts for a step when
the step's function is anywhere on its stack), and the top *leaf* functions (self time).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Inclusive view: (label, substrings of normalised frames ``fn (pkg/module.py)``); a sample
# counts for the step if any frame of its stack contains one of them.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("Admitter.mutate (whole flow)", ("mutate (admission/service/admit.py)",)),
    ("Admitter.validate (whole flow)", ("validate (admission/service/admit.py)",)),
    ("  resolve tag (registry)", ("resolve (admission/service/images.py)",)),
    ("  verify signatures (registry + crypto)", ("(admission/signing/verify.py)",)),
    ("  Rego decision (regopy)", ("(admission/service/rego.py)", "(regopy/")),
    ("  SQL record (incl. thread hand-off)", ("(admission/service/records.py)", "(sqlalchemy/",
                                              "to_thread (", "(concurrent/futures/")),
    ("registry client (httpx/httpcore)", ("(httpx/", "(httpcore/")),
    ("TLS (ssl, asyncio sslproto)", ("(ssl.py)", "(asyncio/sslproto.py)")),
]

# Attributed view: each sample goes to the innermost frame (leaf first) that matches a layer,
# so the shares add up to 100 %. h11 is in no layer on purpose: both uvicorn (server side) and
# httpcore (registry side) use it, and the frame above it says which.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("Rego (regopy)", ("(regopy/", "(admission/service/rego.py)")),
    ("SQL record (SQLAlchemy, sqlite3)", ("(sqlalchemy/", "(sqlite3/",
                                          "(admission/service/records.py)")),
    ("thread hand-off (to_thread, executor)", ("(concurrent/futures/", "to_thread (")),
    ("signature crypto + cosign parsing", ("(cryptography/", "(admission/core/verify.py)",
                                           "(admission/core/cosign.py)")),
    ("registry client (httpx, httpcore, admission.registry*)", (
        "(httpx/", "(httpcore/", "(admission/registry/")),
    ("TLS (ssl, asyncio sslproto)", ("(ssl.py)", "(asyncio/sslproto.py)")),
    ("JSON encode/decode", ("(json/",)),
    ("Prometheus metrics", ("(prometheus_client/", "(admission/service/metrics.py)")),
    ("admission flow, review parsing, policy", ("(admission/",)),
    ("HTTP server (uvicorn, Starlette, FastAPI, anyio)", (
        "(uvicorn/", "(starlette/", "(fastapi/", "(anyio/")),
    ("asyncio event loop, selectors, sockets", ("(asyncio/", "(selectors.py)", "(socket.py)")),
]


def start(pid: int, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    # --nonblocking: do not pause the webhook to read its stacks (no added latency).
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate),
                             "--format", "raw", "--output", str(out), "--nonblocking",
                             "--threads"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarise(path: Path, title: str, top: int = 12) -> str:
    """Markdown: inclusive step shares and top leaf functions of a raw py-spy file."""
    if not path.exists() or path.stat().st_size == 0:
        return f"\n(py-spy recorded nothing for {title})\n"
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        joined, _, count = line.rpartition(" ")
        if joined and count.isdigit():
            stacks.append(([_short(f) for f in joined.split(";")], int(count)))
    total = sum(n for _, n in stacks)
    if total == 0:
        return f"\n(py-spy recorded no samples for {title})\n"
    lines = [f"\n### py-spy: {title} ({total} samples of running webhook threads)\n",
             "| step (inclusive) | share of samples |", "|---|---|"]
    for label, needles in STEPS:
        n = sum(c for frames, c in stacks
                if any(any(s in f for s in needles) for f in frames))
        lines.append(f"| {label} | {100 * n / total:.1f} % |")
    layers: Counter[str] = Counter()
    for frames, c in stacks:
        layer = next((label for f in reversed(frames) for label, needles in LAYERS
                      if any(n in f for n in needles)), "other (interpreter, stdlib)")
        layers[layer] += c
    lines += ["", "| layer (innermost frame; adds up to 100 %) | share |", "|---|---|"]
    lines += [f"| {label} | {100 * n / total:.1f} % |" for label, n in layers.most_common()]
    leaves: Counter[str] = Counter()
    for frames, c in stacks:
        leaves[frames[-1]] += c
    lines += ["", "| leaf function (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * n / total:.1f} % |" for name, n in leaves.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` → ``fn (pkg/mod.py)``."""
    fn, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{fn} ({where})"
