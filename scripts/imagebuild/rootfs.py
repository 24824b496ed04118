"""The files every image gets besides packages: users, directories, name service, bytecode."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from scripts.imagebuild.errors import StepFailed

UID = GID = 10001
USER = "umec"
DATA_DIR = "var/lib/umec"
HOME = "home/umec"
# (uid, gid) of paths in the layer that are not root's
OWNERS = {DATA_DIR: (UID, GID), HOME: (UID, GID)}


def write_system_files(rootfs: Path) -> None:
    """/etc/passwd, group, nsswitch.conf; /tmp; the non-root user's home and data dir."""
    etc = rootfs / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"{USER}:x:{UID}:{GID}:µMEC Trust:/{HOME}:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\n{USER}:x:{GID}:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n"
                                       "networks: files\nprotocols: files\nservices: files\n")
    for rel, mode in (("tmp", 0o1777), (DATA_DIR, 0o750), (HOME, 0o750), ("root", 0o700)):
        path = rootfs / rel
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)


def compile_bytecode(layer: Path, dirs: Sequence[str]) -> None:
    """Compile every .py below ``dirs`` of ``layer`` to unchecked-hash .pyc files.

    Unchecked-hash pycs hold no source mtime (so a layer's bytes do not depend on when it was
    built) and are used without reading the source; the hash seed is fixed so frozenset
    constants are ordered the same every time. The host's Python is 3.11 like the image's
    (same magic number); file names in the code objects are the image's paths."""
    targets = [str(layer / d) for d in dirs if (layer / d).is_dir()]
    if not targets:
        return
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": "0"}
    proc = subprocess.run(
        ["/usr/bin/python3.11", "-m", "compileall", "-q", "-q", "-j", "0",
         "--invalidation-mode", "unchecked-hash", "-s", str(layer), "-p", "/", *targets],
        env=env, capture_output=True, text=True, check=False)
    # compileall exits 1 when a file does not compile (test data with Python 2 syntax ships in
    # some wheels); such a file simply has no .pyc. Anything else is a failure.
    if proc.returncode not in (0, 1):
        raise StepFailed(f"compileall failed ({proc.returncode}): {proc.stderr[-500:]}")


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total
