"""A reproducible layer: a directory as a tar whose bytes depend only on its contents.

Entries are sorted (parents first), owners are numeric (root unless ``owners`` says otherwise
for a path), names carry no user or group name, every mtime is clamped to ``epoch``
(SOURCE_DATE_EPOCH), hard links are written as regular files, and gzip has no name and time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from scripts.imagebuild.errors import StepFailed

CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerFile:
    """A written layer: its digests (compressed and uncompressed) and sizes."""

    path: Path
    digest: str  # sha256 of the gzip blob
    diff_id: str  # sha256 of the tar
    size: int
    tar_size: int


def sort_key(relpath: str) -> tuple[str, ...]:
    """Parents before children, siblings by name: ``a`` < ``a/b`` < ``a-b``."""
    return tuple(relpath.split("/"))


def walk(root: Path) -> list[str]:
    """Every path below ``root`` (relative, POSIX), in :func:`sort_key` order."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            found.append(name if rel == "." else f"{rel}/{name}")
    return sorted(found, key=sort_key)


def owner_of(relpath: str, owners: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """The (uid, gid) of the longest ``owners`` prefix covering ``relpath``; root otherwise."""
    best = ""
    for prefix in owners:
        if (relpath == prefix or relpath.startswith(prefix + "/")) and len(prefix) > len(best):
            best = prefix
    return owners[best] if best else (0, 0)


def tar_info(root: Path, relpath: str, *, epoch: int,
             owners: Mapping[str, tuple[int, int]]) -> tarfile.TarInfo:
    """The normalised header of one path (regular file, directory or symlink only)."""
    full = root / relpath
    st = full.lstat()
    info = tarfile.TarInfo(relpath)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = owner_of(relpath, owners)
    info.uname = info.gname = ""
    info.mtime = min(int(st.st_mtime), epoch)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(full)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        raise StepFailed(f"{relpath}: only files, directories and symlinks go into a layer")
    return info


def write_tar(root: Path, out: BinaryIO, *, epoch: int,
              owners: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Write ``root``'s tree to ``out`` as a reproducible PAX tar."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for relpath in walk(root):
            info = tar_info(root, relpath, epoch=epoch, owners=owners or {})
            if info.type == tarfile.REGTYPE:
                with open(root / relpath, "rb") as body:
                    tar.addfile(info, body)
            else:
                tar.addfile(info)


class _Hashing(io.RawIOBase):
    def __init__(self, sink: BinaryIO) -> None:
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            yield chunk


def write_layer(root: Path, out_dir: Path, *, epoch: int,
                owners: Mapping[str, tuple[int, int]] | None = None) -> LayerFile:
    """Tar ``root`` reproducibly, gzip it (no name, mtime 0) into ``out_dir``/<digest>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = out_dir / "layer.tar.tmp"
    with open(tar_path, "wb") as raw:
        hashing = _Hashing(raw)
        write_tar(root, hashing, epoch=epoch, owners=owners)  # type: ignore[arg-type]
    diff_id, tar_size = hashing.hash.hexdigest(), hashing.size
    gz_path = out_dir / "layer.tar.gz.tmp"
    with open(gz_path, "wb") as raw:
        zipped = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=zipped,
                           compresslevel=6, mtime=0) as gz:
            for chunk in _chunks(tar_path):
                gz.write(chunk)
    tar_path.unlink()
    final = out_dir / zipped.hash.hexdigest()
    gz_path.replace(final)
    return LayerFile(final, f"sha256:{zipped.hash.hexdigest()}", f"sha256:{diff_id}",
                     zipped.size, tar_size)
