"""The kubelet's Secret volumes, reproduced (pkg/volume/util/atomic_writer.go and
SetVolumeOwnership in pkg/volume/volume_linux.go), and the real key loaders run as a pod's user:
tests/umec/test_deploy_secrets.py and tests/umec/test_install_guide.py.

A Secret volume: a timestamped directory ``..<ts>`` (0755) with the files at ``defaultMode``,
owned by root, a ``..data`` symlink to it and one symlink per key into ``..data``; with the
pod's ``fsGroup``, everything's group set to it (symlinks with lchown), ``| 0440`` on files (a
Secret volume is read-only) and ``| 0550`` plus setgid on directories. :func:`load_as` runs the
loaders in a child with the pod's uid, gid and supplementary fsGroup, as the runtime starts it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# The child runs as the pod's uid, which may not traverse root's home where the virtualenv's
# interpreter may live: the system's CPython of the same version, with the venv's packages.
PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
SITE = Path(sysconfig.get_paths()["purelib"])

LOADER = r"""
import json, ssl, sys
from pathlib import Path
from keys import KeyRing, KeysError, load_or_create_secret, load_private_key
out = {}
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "ring":
            KeyRing.load(path)
        elif kind == "secret":
            load_or_create_secret(Path(path) / "challenge-key")
        else:
            load_private_key(Path(path) / "tls.key")
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                Path(path) / "tls.crt", Path(path) / "tls.key")
        out[path] = "loaded"
    except KeysError as err:
        out[path] = f"{type(err).__name__} {err.check}: {err.detail}"
print(json.dumps(out))
"""


def kubelet_secret_volume(volume: Path, files: dict[str, bytes], default_mode: int,
                          fs_group: int | None) -> None:
    """Lay out one Secret volume as the kubelet does (module doc)."""
    volume.mkdir()
    os.chmod(volume, 0o777)   # the tmpfs emptyDir the secret plugin wraps
    ts = volume / "..2026_01_01_00_00_00.123456789"
    ts.mkdir()
    os.chmod(ts, 0o755)
    for name, data in files.items():
        (ts / name).write_bytes(data)
        os.chmod(ts / name, default_mode)
    (volume / "..data").symlink_to(ts.name)
    for name in files:
        (volume / name).symlink_to(f"..data/{name}")
    if fs_group is None:
        return
    for path in [volume, *volume.rglob("*")]:
        os.lchown(path, -1, fs_group)
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue   # the kubelet skips chmod on symlinks (it would change the target)
        mask = 0o440 | (0o110 | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0)
        os.chmod(path, stat.S_IMODE(st.st_mode) | mask)


def pod_volumes(pod: dict[str, Any], root: Path, contents: dict[str, dict[str, bytes]],
                *, default_mode: int | None = None, fs_group: Any = "pod",
                owner: int | None = None) -> list[tuple[str, str]]:
    """Every Secret volume of ``pod`` under ``root`` (overrides: another defaultMode, fsGroup
    or file owner); [(kind, path)] for the loader."""
    group = pod.get("securityContext", {}).get("fsGroup") if fs_group == "pod" else fs_group
    out = []
    for volume in pod["volumes"]:
        if "secret" not in volume:
            continue
        secret = volume["secret"]
        mode = default_mode if default_mode is not None else secret.get("defaultMode", 0o644)
        path = root / volume["name"]
        files = contents[secret["secretName"]]
        kubelet_secret_volume(path, files, mode, group)
        if owner is not None:
            for target in (path / "..data").iterdir():
                os.chown(target, owner, -1)
        kind = ("ring" if "index.json" in files else
                "secret" if "challenge-key" in files else "tls")
        out.append((kind, str(path)))
    return out


def load_as(pod: dict[str, Any], volumes: list[tuple[str, str]],
            uid: int | None = None) -> dict[str, str]:
    """The real loaders in a child with the pod's identity (runAsUser, runAsGroup, fsGroup)."""
    sc = pod["securityContext"]
    extra = [sc["fsGroup"]] if "fsGroup" in sc else []
    done = subprocess.run(
        [str(PYTHON), "-c", LOADER, json.dumps(volumes)], capture_output=True, text=True,
        user=uid if uid is not None else sc["runAsUser"], group=sc.get("runAsGroup", 0),
        extra_groups=extra, cwd="/", timeout=60, check=False,
        env={"PYTHONPATH": f"{REPO}:{SITE}", "PYTHONDONTWRITEBYTECODE": "1",
             "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result
