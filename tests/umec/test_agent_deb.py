"""The host agent's Debian package (issue 13, scripts/build-agent-deb.sh), fast and offline.

The pure parts are tested here: the control file, the console-script launcher, the maintainer
scripts (``sh -n``). Building the packages takes minutes (wheels fetched, tpm2-pytss
cross-compiled): it is run by hand. With ``UMEC_AGENT_DEB_DIR`` set to a build's output dir the
built packages are checked too: fields and files (``dpkg-deb -I``/``-c``), every arm64 ELF file is
arm64 and needs only sonames the package or its ``Depends:`` provide, and the amd64 package,
extracted into tmp_path, runs ``umec --help`` and refuses to enrol as a DaemonSet agent on a
host-agent node with Debian's python3.11. Without it those tests skip.
"""

from __future__ import annotations

import keyword
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.imagebuild import agentdeb, elf

REPO = Path(__file__).resolve().parents[2]
DEB_DIR = os.environ.get("UMEC_AGENT_DEB_DIR")
# Sonames the Depends: bring (Debian bookworm): libc6 (and libgcc-s1 through it), tpm2-tss.
FROM_DEPENDS = {"libc.so.6", "libdl.so.2", "libpthread.so.0", "libm.so.6", "librt.so.1",
                "libgcc_s.so.1", "ld-linux-aarch64.so.1", "ld-linux-x86-64.so.2",
                "libtss2-esys.so.0", "libtss2-mu.so.0", "libtss2-rc.so.0",
                "libtss2-tctildr.so.0", "libtss2-sys.so.1"}


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_control_depends_on_debian_python_and_tpm2_tss() -> None:
    fields = _fields(agentdeb.control("0.1.0", "arm64", 54000))
    assert fields["Package"] == "umec-agent" and fields["Architecture"] == "arm64"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert "python3.11" in depends and "libtss2-esys-3.0.2-0" in depends
    assert "libtss2-tcti-device0" in depends and "libtss2-tcti-swtpm0" in depends
    assert fields["Installed-Size"] == "54000"
    assert not any(d.startswith(("gcc", "python3-dev", "build-essential")) for d in depends)


def test_maintainer_scripts_are_valid_sh() -> None:
    for script in (agentdeb.POSTINST, agentdeb.PRERM, agentdeb.POSTRM):
        assert script.startswith("#!/bin/sh\nset -e\n")
        subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "install -m 0600" in agentdeb.POSTINST  # the settings file, created once


def test_launcher_runs_the_console_script_on_the_venv() -> None:
    name, script = agentdeb.launcher("umec = umec.cli:app")
    assert name == "umec"
    assert script.startswith("#!/opt/umec-agent/bin/python3\n")
    assert "from umec.cli import app" in script and "sys.exit(app())" in script
    compile(script, name, "exec")


_IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name))


@given(_IDENT, st.lists(_IDENT, min_size=1, max_size=3), st.lists(_IDENT, min_size=1,
                                                                 max_size=2))
def test_launcher_of_any_entry_point_compiles(name: str, module: list[str],
                                              attr: list[str]) -> None:
    spec = f"{name} = {'.'.join(module)}:{'.'.join(attr)}"
    got, script = agentdeb.launcher(spec)
    assert got == name
    compile(script, got, "exec")


needs_debs = pytest.mark.skipif(not DEB_DIR, reason="UMEC_AGENT_DEB_DIR is not set (build with "
                                "scripts/build-agent-deb.sh OUT_DIR, then point it at OUT_DIR)")


def _deb(arch: str) -> Path:
    assert DEB_DIR
    found = sorted(Path(DEB_DIR).glob(f"umec-agent_*_{arch}.deb"))
    assert found, f"no {arch} package in {DEB_DIR}"
    return found[-1]


def _extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


@needs_debs
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_built_package_fields_and_files(arch: str) -> None:
    deb = _deb(arch)
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    assert _fields(info)["Architecture"] == arch
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    for path in ("./lib/systemd/system/umec-agent.service",
                 "./lib/systemd/system/umec-agent-join.service",
                 "./lib/systemd/system/k3s-agent.service.d/10-umec.conf",
                 "./opt/umec-agent/bin/umec", "./opt/umec-agent/pyvenv.cfg",
                 "./opt/umec-agent/bin/python3 -> /usr/bin/python3.11"):
        assert path in listing, path
    assert "tpm2_pytss/" in listing


@needs_debs
def test_built_arm64_package_is_arm64_and_needs_only_what_it_depends_on(
        tmp_path: Path) -> None:
    root = _extract(_deb("arm64"), tmp_path / "root")
    own: set[str] = set()
    needed: set[str] = set()
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        header = elf.read_elf_header(data[:64])
        if header is None:
            continue
        assert elf.matches_arch(header, "arm64"), path
        own.add(path.name)
        needed |= set(elf.needed_libraries(data))
    assert own, "no compiled module in the package"
    assert needed - own <= FROM_DEPENDS, sorted(needed - own - FROM_DEPENDS)


@needs_debs
def test_built_amd64_package_runs_from_its_venv(tmp_path: Path) -> None:
    root = _extract(_deb("amd64"), tmp_path / "root")
    venv = root / "opt/umec-agent"
    python = venv / "bin/python3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UMEC_", "PYTHON",
                                                                        "VIRTUAL_ENV"))}
    ran = subprocess.run([str(python), str(venv / "bin/umec"), "--help"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and "agent" in ran.stdout, ran.stderr
    where = subprocess.run([str(python), "-c", "import tpm2_pytss, umec; "
                            "print(tpm2_pytss.__file__, umec.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.count(str(venv)) == 2  # both from the package, none from the host
    marker = tmp_path / "host" / "host-agent.json"
    marker.parent.mkdir()
    marker.write_text('{"node": "pi-01", "since": 0}\n')
    env.update({"UMEC_NODE_NAME": "pi-01", "UMEC_AGENT_ROLE": "daemonset",
                "UMEC_HOST_AGENT_MARKER": str(marker), "UMEC_SERVER_URL": "http://127.0.0.1:9",
                "UMEC_AGENT_STATE_DIR": str(tmp_path / "state")})
    refused = subprocess.run([str(python), str(venv / "bin/umec"), "agent"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "agent.host_owned" in refused.stderr, refused.stderr
