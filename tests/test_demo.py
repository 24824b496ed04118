"""`umec demo`, the main job, runs to its end, passes, and leaves nothing running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attest.tpm.swtpm import swtpm_available
from umec.localregistry import registry_available


@pytest.mark.skipif(not (swtpm_available() and registry_available()),
                    reason="swtpm and docker-registry are needed (scripts/setup.sh)")
def test_demo_passes_and_cleans_up() -> None:
    def ours() -> set[str]:
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in out.splitlines()
                if "umec-demo-" in line and ("swtpm" in line or "docker-registry" in line)}
    before = ours()
    result = subprocess.run([sys.executable, "-m", "umec", "demo"], capture_output=True,
                            text=True, timeout=300, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("node-a: trusted", "node-b: untrusted", "policy.pcr_value",
                 "signed pod admitted", "unsigned pod denied", "sensor: 24.3 °C",
                 "espresso", "gets no token: admission.pod", "node node-a is no longer trusted",
                 "demo passed"):
        assert line in result.stdout, line
    assert "UNEXPECTED" not in result.stdout
    assert ours() <= before  # every swtpm and registry the demo started is gone
