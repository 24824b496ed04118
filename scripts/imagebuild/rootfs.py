"""The files every image gets besides packages: users, directories, name service, bytecode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from scripts.imagebuild.confine import is_regular, make_dirs, resolve_in, write_file
from scripts.imagebuild.errors import PathEscapes, StepFailed

UID = GID = 10001
USER = "umec"
DATA_DIR = "var/lib/umec"
HOME = "home/umec"
# (uid, gid) of paths in the layer that are not root's
OWNERS = {DATA_DIR: (UID, GID), HOME: (UID, GID)}


def write_system_files(rootfs: Path) -> None:
    """/etc/passwd, group, nsswitch.conf; /tmp; the non-root user's home and data dir."""
    write_file(rootfs, "etc/passwd", "root:x:0:0:root:/root:/usr/sbin/nologin\n"
               f"{USER}:x:{UID}:{GID}:µMEC Trust:/{HOME}:/usr/sbin/nologin\n")
    write_file(rootfs, "etc/group", f"root:x:0:\n{USER}:x:{GID}:\n")
    write_file(rootfs, "etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"
               "networks: files\nprotocols: files\nservices: files\n")
    for rel, mode in (("tmp", 0o1777), (DATA_DIR, 0o750), (HOME, 0o750), ("root", 0o700)):
        make_dirs(rootfs, rel, mode)


def bytecode_jobs(layer: Path, dirs: Sequence[str]) -> list[tuple[str, str, str]]:
    """(source, pyc, name in the image) for every .py below ``dirs`` of ``layer``.

    Nothing outside ``layer`` is read or written: each dir is resolved inside it, symlinked
    directories are not entered (as compileall), and a symlinked .py is compiled from its
    target resolved inside the layer (``sitecustomize.py -> /etc/python3.11/...`` is the
    image's file, not the build host's), or skipped when that is no regular file there. Its
    ``__pycache__`` is a real directory of the layer (a symlink there raises PathEscapes)."""
    jobs = []
    for top in dirs:
        start = resolve_in(layer, top)
        for dirpath, dirnames, filenames in os.walk(start):  # does not follow symlinked dirs
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            here = Path(dirpath)
            for name in sorted(n for n in filenames if n.endswith(".py")):
                rel = (here / name).relative_to(layer).as_posix()
                source = resolve_in(layer, rel)
                if not is_regular(source):
                    continue
                cache = here / "__pycache__"
                if cache.is_symlink() or (cache.exists() and not cache.is_dir()):
                    raise PathEscapes(f"{cache.relative_to(layer)}: not a directory")
                cache.mkdir(exist_ok=True)
                pyc = cache / f"{name[:-3]}.{sys.implementation.cache_tag}.pyc"
                if pyc.is_symlink():
                    pyc.unlink()
                jobs.append((str(source), str(pyc), f"/{rel}"))
    return jobs


# Runs in /usr/bin/python3.11 with a fixed hash seed; py_compile writes the pyc through a
# temporary file and os.replace (a symlink at the pyc's name is replaced, not followed).
_COMPILE = """
import json, py_compile, sys
from concurrent.futures import ProcessPoolExecutor
def one(job):
    try:
        py_compile.compile(job[0], cfile=job[1], dfile=job[2], doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except py_compile.PyCompileError:
        pass  # test data with Python 2 syntax ships in some wheels: no .pyc for it
jobs = json.load(sys.stdin)
with ProcessPoolExecutor() as pool:
    list(pool.map(one, jobs, chunksize=64))
"""


def compile_bytecode(layer: Path, dirs: Sequence[str]) -> None:
    """Compile every .py below ``dirs`` of ``layer`` to unchecked-hash .pyc files.

    Unchecked-hash pycs hold no source mtime (so a layer's bytes do not depend on when it was
    built) and are used without reading the source; the hash seed is fixed so frozenset
    constants are ordered the same every time. The host's Python is 3.11 like the image's
    (same magic number); file names in the code objects are the image's paths. Which files
    are read and written: :func:`bytecode_jobs`."""
    jobs = bytecode_jobs(layer, [d for d in dirs if resolve_in(layer, d).is_dir()])
    if not jobs:
        return
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": "0"}
    proc = subprocess.run(["/usr/bin/python3.11", "-c", _COMPILE], input=json.dumps(jobs),
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StepFailed(f"compiling bytecode failed ({proc.returncode}): {proc.stderr[-500:]}")


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total
