"""`umec demo`, the main job, runs to its end, passes, and leaves nothing running; when a step
fails, its log (server, webhook, the demo's checks) is kept and named on stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import IO

import httpx
import pytest

from attest.tpm.swtpm import swtpm_available
from umec.localregistry import registry_available

needs_demo_parts = pytest.mark.skipif(
    not (swtpm_available() and registry_available()),
    reason="swtpm and docker-registry are needed (scripts/setup.sh)")


@needs_demo_parts
def test_demo_passes_and_cleans_up(tmp_path: Path) -> None:
    def ours() -> set[str]:
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines()
                if "umec-demo-" in line and ("swtpm" in line or "docker-registry" in line)}
    before = ours()
    # --stay: the site stays up after the story; the dashboard and the app answer meanwhile,
    # and SIGTERM stops it as cleanly as Ctrl-C (nothing left running, the demo passes).
    with subprocess.Popen([sys.executable, "-m", "umec", "demo", "--stay", "300"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1",
                               "TMPDIR": str(tmp_path)}) as demo:
        assert demo.stdout is not None
        try:
            head = _through_stay_banner(demo.stdout)
            dashboard, app_url = head[-3].split()[1], head[-2].split()[-1]
            assert httpx.get(dashboard + "login", timeout=10).status_code == 200
            assert "Take a picture and classify it" in httpx.get(app_url, timeout=10).text
            assert head[-1].rstrip().endswith("/server/operator-token")
        except BaseException:
            demo.kill()
            raise
        demo.terminate()
        rest, err = demo.communicate(timeout=120)
    result = subprocess.CompletedProcess(demo.args, demo.returncode, "".join(head) + rest, err)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("node-a: trusted", "node-b: untrusted", "policy.pcr_value",
                 "signed pod admitted", "unsigned pod denied", "sensor: 24.3 °C",
                 "espresso", "gets no token: admission.pod", "node node-a is no longer trusted",
                 "the sample app's pod (same signed image) admitted",
                 "classified the camera's picture: espresso", "sample app: http://127.0.0.1:",
                 "the sample app now shows 503 app.token_exchange",
                 "8. The site stays up", "demo passed"):
        assert line in result.stdout, line
    assert "UNEXPECTED" not in result.stdout
    assert ours() <= before  # every swtpm and registry the demo started is gone
    assert "log is kept" not in result.stderr
    assert not list(tmp_path.glob("umec-demo-log-*"))  # a passing demo deletes its log


FAIL_AT_STEP_4 = """
import sys
from rich.console import Console
from umec.demo import run_demo
sys.exit(run_demo(Console(width=120), None, "DEBUG", fail_at_step=4))
"""


@needs_demo_parts
def test_a_failing_step_keeps_the_log_and_prints_its_path(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", FAIL_AT_STEP_4], capture_output=True,
                            text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                         "TMPDIR": str(tmp_path)})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo FAILED" in result.stdout and "step 4 made to fail" in result.stdout
    kept = re.findall(r"a step failed; its log is kept in (\S+)$", result.stderr, re.M)
    assert len(kept) == 1, result.stderr
    log = Path(kept[0])
    assert log.parent.parent == tmp_path and log.parent.name.startswith("umec-demo-log-")
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    # The server's own records (nodes trusted in step 3), at the level asked for (DEBUG) ...
    assert any(r["logger"] == "umec.attest" and r["msg"] == "node state changed"
               and r.get("state") == "trusted" for r in records), records[-10:]
    assert any(r["level"] == "debug" for r in records)
    # ... in one timeline with the demo's steps and checks, ending with the failure.
    assert [r["step"] for r in records if r["msg"] == "demo step"] == [1, 2, 3, 4]
    assert any(r["msg"] == "demo check passed" and "node-a: trusted" in r["what"]
               for r in records)
    assert records[-1]["msg"] == "demo step failed"
    assert (log.parent / "umec.db").stat().st_size > 0  # the server's database, for the record
    assert not list(tmp_path.glob("umec-demo-[!l]*"))  # the work directory itself is gone


def _through_stay_banner(stream: IO[str]) -> list[str]:
    """Lines of ``stream`` through step 8's three (dashboard, sample app, token file)."""
    lines: list[str] = []
    for line in stream:
        lines.append(line)
        if len(lines) > 2 and "dashboard: " in lines[-3]:
            return lines
    raise AssertionError("the demo ended before step 8: " + "".join(lines)[-3000:])
