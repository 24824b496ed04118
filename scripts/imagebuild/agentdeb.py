"""The host agent as a Debian package: ``python -m scripts.imagebuild.agentdeb --out DIR``.

``umec-agent_<version>_<arch>.deb`` installs the slim agent (the ``agent`` extra, exactly the
wheels the umec-agent image pins in scripts/images.lock.json, plus tpm2-pytss cross-compiled
from its sdist against Debian's tpm2-tss) into ``/opt/umec-agent``: a virtual environment laid
out by hand on Debian's ``python3.11`` (pyvenv.cfg, ``bin/python3`` → ``/usr/bin/python3.11``),
so nothing is compiled or downloaded on the node. Debian's own libraries (Python, tpm2-tss and
its TCTIs) are ``Depends:``, installed by apt from the node's bookworm repositories. The systemd
units of deploy/host go to ``/lib/systemd/system``. See docs/decisions.md, "The host agent".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.imagebuild import build, debian, pywheels, tpm2
from scripts.imagebuild.errors import StepFailed
from scripts.imagebuild.rootfs import compile_bytecode, tree_size

PACKAGE = "umec-agent"
PREFIX = "opt/umec-agent"
VENV_SITE = f"{PREFIX}/lib/python3.11/site-packages"
HOST_DIR = build.REPO / "deploy" / "host"
UNITS = ("umec-agent.service", "umec-agent-join.service")
# Debian bookworm (and Raspberry Pi OS bookworm, which uses Debian's arm64 packages) names.
DEPENDS = ("python3.11", *tpm2.RUNTIME_DEBS[:-1])  # mssim's TCTI: a simulator, Recommends
RECOMMENDS = (tpm2.RUNTIME_DEBS[-1], "ca-certificates")
MAINTAINER = "µMEC Trust <umec-trust@localhost>"
DESCRIPTION = ("µMEC Trust host agent: TPM attestation before k3s joins\n"
               " Runs `umec agent` under systemd (umec-agent.service) from boot: it enrols the\n"
               " node's TPM, attests it, and lets k3s-agent start only after a trusted verdict\n"
               " (umec-agent-join.service, k3s-agent.service.d/10-umec.conf). Python code and\n"
               " wheels live in /opt/umec-agent; settings in /etc/umec/agent.env.")

POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
  install -d -m 0755 /etc/umec
  [ -e /etc/umec/agent.env ] ||
    install -m 0600 /opt/umec-agent/share/agent.env.example /etc/umec/agent.env
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable umec-agent.service umec-agent-join.service >/dev/null
    if grep -q '^UMEC_SERVER_URL=' /etc/umec/agent.env; then
      systemctl restart umec-agent.service
    else
      echo "umec-agent: set UMEC_SERVER_URL and UMEC_SERVER_CA in /etc/umec/agent.env," \\
           "then: sudo systemctl start umec-agent" >&2
    fi
  fi
fi
"""
PRERM = """#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl disable --now umec-agent-join.service umec-agent.service >/dev/null || true
fi
"""
POSTRM = """#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -f /etc/umec/agent.env
  rmdir /etc/umec 2>/dev/null || true
  rm -rf /var/lib/umec /run/umec
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
"""
AGENT_ENV = """# µMEC Trust host agent settings (umec-agent.service reads this file; see
# /opt/umec-agent/share/README.md). Values here override the unit's defaults.
# The server's URL and CA certificate (from `umec deploy render`):
#UMEC_SERVER_URL=https://umec.example.net:8443
#UMEC_SERVER_CA=/etc/umec/server-ca.crt
# This node's Kubernetes name (default: the host name, as k3s uses):
#UMEC_NODE_NAME=pi-01
# The TPM: an SPI TPM HAT (default) or swtpm on this machine:
#UMEC_TCTI=device:/dev/tpmrm0
#UMEC_TCTI=swtpm:host=127.0.0.1,port=2321
#UMEC_NODE_CLASS=rpi5
#UMEC_MEASURE_FILES=["/usr/local/bin/k3s"]
"""
# New nodes register with this label (k3s reads config.yaml.d at start; "+" appends): the
# DaemonSet's affinity keeps its pods off nodes with a host agent.
K3S_LABEL = 'node-label+:\n  - "umec.io/agent=host"\n'


def launcher(spec: str) -> tuple[str, str]:
    """A console-script entry point (``umec=umec.cli:app``) as (name, script on the venv)."""
    name, _, target = spec.partition("=")
    module, _, attr = target.strip().partition(":")
    return name.strip(), (f"#!/{PREFIX}/bin/python3\nimport sys\nfrom {module.strip()} import "
                          f"{attr.split('.')[0].strip()}\nif __name__ == '__main__':\n"
                          f"    sys.exit({attr.strip()}())\n")


def control(version: str, arch: str, installed_kib: int) -> str:
    """The package's DEBIAN/control."""
    return (f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\n"
            f"Maintainer: {MAINTAINER}\nInstalled-Size: {installed_kib}\n"
            f"Depends: {', '.join(DEPENDS)}\nRecommends: {', '.join(RECOMMENDS)}\n"
            "Section: admin\nPriority: optional\nHomepage: https://github.com/umec-trust\n"
            f"Description: {DESCRIPTION}\n")


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _venv(stage: Path, wheels: Sequence[Path]) -> None:
    """Install ``wheels`` as /opt/umec-agent, a venv on Debian's python3.11."""
    scratch = stage.parent / f"{stage.name}-wheels"
    shutil.rmtree(scratch, ignore_errors=True)
    entries = [entry for wheel in wheels for entry in pywheels.install_wheel(wheel, scratch)
               if wheel.name.startswith("umec_trust-")]
    site = stage / VENV_SITE
    site.parent.mkdir(parents=True)
    shutil.move(scratch / pywheels.SITE, site)
    shutil.rmtree(scratch)
    bindir = stage / PREFIX / "bin"
    bindir.mkdir(parents=True)
    for name in ("python3", "python3.11", "python"):
        (bindir / name).symlink_to(pywheels.TARGET_PYTHON)
    _write(stage, f"{PREFIX}/pyvenv.cfg", "home = /usr/bin\ninclude-system-site-packages = "
           "false\nversion = 3.11\n")
    for entry in entries:
        name, script = launcher(entry)
        _write(stage, f"{PREFIX}/bin/{name}", script, 0o755)
    if not (bindir / "umec").exists():
        raise StepFailed("the umec-trust wheel declares no `umec` console script")
    compile_bytecode(stage, [VENV_SITE])


def _system_files(stage: Path) -> None:
    for unit in UNITS:
        _write(stage, f"lib/systemd/system/{unit}", (HOST_DIR / unit).read_text())
    _write(stage, "lib/systemd/system/k3s-agent.service.d/10-umec.conf",
           (HOST_DIR / "k3s-agent.service.d" / "10-umec.conf").read_text())
    _write(stage, "etc/rancher/k3s/config.yaml.d/50-umec-host-agent.yaml", K3S_LABEL)
    _write(stage, f"{PREFIX}/share/README.md", (HOST_DIR / "README.md").read_text())
    _write(stage, f"{PREFIX}/share/agent.env.example", AGENT_ENV)


def stage_package(inputs: build.Inputs, arch: str, stage: Path) -> dict[str, int]:
    """The package's tree in ``stage``; returns the wheel count and installed bytes."""
    shutil.rmtree(stage, ignore_errors=True)
    _, wheels = build.image_inputs(inputs, build.IMAGES[PACKAGE], arch)
    everything = [*wheels, inputs.tpm2_wheels[arch], inputs.app_wheel]
    _venv(stage, everything)
    _system_files(stage)
    size = tree_size(stage)
    meta = stage / "DEBIAN"
    meta.mkdir()
    _write(stage, "DEBIAN/control", control(inputs.version, arch, (size + 1023) // 1024))
    _write(stage, "DEBIAN/conffiles", "/etc/rancher/k3s/config.yaml.d/50-umec-host-agent.yaml\n")
    for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        _write(stage, f"DEBIAN/{name}", text, 0o755)
    return {"wheels": len(everything), "installed_bytes": size}


def build_deb(stage: Path, out: Path, epoch: int) -> Path:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    debian.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(out)],
               env=env, what=f"dpkg-deb --build {out.name}")
    return out


def build_all(args: argparse.Namespace) -> dict[str, object]:
    if platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11):
        raise StepFailed("build-agent-deb runs on an x86_64 host with Python 3.11")
    started = time.monotonic()
    args.images, args.update_lock = [PACKAGE], False
    inputs = build.setup(args)
    build.prepare_tpm2(inputs, args.arch)
    report: dict[str, object] = {"commit": inputs.commit, "version": inputs.version}
    for arch in args.arch:
        begun = time.monotonic()
        stage = inputs.out / "work" / f"deb-{arch}"
        info = stage_package(inputs, arch, stage)
        deb = build_deb(stage, inputs.out / f"{PACKAGE}_{inputs.version}_{arch}.deb",
                        inputs.epoch)
        shutil.rmtree(stage)
        report[arch] = {**info, "deb": deb.name, "bytes": deb.stat().st_size,
                        "sha256": debian.sha256_file(deb),
                        "seconds": round(time.monotonic() - begun, 1)}
    report["seconds_total"] = round(time.monotonic() - started, 1)
    (inputs.out / "deb-report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def arg_parser() -> argparse.ArgumentParser:
    """The options of scripts/build-agent-deb.sh (its OUT_DIR is ``--out``)."""
    parser = argparse.ArgumentParser(prog="build-agent-deb", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output dir (.debs, cache/)")
    parser.add_argument("--lock", type=Path, default=build.DEFAULT_LOCK, help="lock of inputs")
    parser.add_argument("--commit", default="HEAD", help="git commit to build (default HEAD)")
    parser.add_argument("--arch", nargs="+", choices=["amd64", "arm64"],
                        default=["amd64", "arm64"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = arg_parser().parse_args(argv)
    from kernel.errors import CheckedError
    try:
        report = build_all(args)
    except CheckedError as exc:
        print(f"build-agent-deb: {exc}\n  what to do: {exc.hint}", file=sys.stderr)
        return 1
    for arch in args.arch:
        info = report[arch]
        assert isinstance(info, dict)
        print(f"{info['deb']}: {info['bytes'] / 1e6:.1f} MB, installed "
              f"{info['installed_bytes'] / 1e6:.1f} MB, {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
