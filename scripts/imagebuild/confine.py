"""Paths inside an image's root file system, never followed out of it (issue 12, F4).

A package's symlinks are the image's, not the build host's: ``usr/lib/ssl/certs ->
/etc/ssl/certs`` means the rootfs's ``etc/ssl/certs``. :func:`resolve_in` resolves a path the
way the image's kernel would (absolute targets from the rootfs, each hop checked), refusing a
``..`` above the rootfs or a symlink loop with :class:`PathEscapes`. Everything that writes,
reads, compiles or chmods in a rootfs goes through it; :func:`extract_deb` replaces
``dpkg-deb -x`` (whose tar writes through a symlink an earlier package left) with a tar reader
that creates each entry itself, at its rootfs-resolved place.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from scripts.imagebuild.errors import PathEscapes, StepFailed

MAX_HOPS = 40  # like the kernel's limit on symlinks followed in one lookup


def _parts(rel: str | PurePosixPath) -> list[str]:
    # split by hand: PurePosixPath keeps a leading '//' as a root of its own
    return [p for p in str(rel).split("/") if p not in ("", ".")]


def resolve_in(root: Path, rel: str | PurePosixPath, *, follow_last: bool = True) -> Path:
    """``rel`` below ``root`` with every symlink resolved against ``root``.

    The result is ``root`` joined with components none of which is a symlink (the last one may
    be, when ``follow_last`` is false) and may not exist yet. A ``..`` above ``root`` or more
    than MAX_HOPS symlinks raise PathEscapes."""
    pending = list(reversed(_parts(rel)))
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not done:
                raise PathEscapes(f"{rel}: '..' leaves the image root")
            done.pop()
            continue
        here = root.joinpath(*done, part)
        if (pending or follow_last) and here.is_symlink():
            hops += 1
            if hops > MAX_HOPS:
                raise PathEscapes(f"{rel}: more than {MAX_HOPS} symlinks (a loop?)")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending.extend(reversed(_parts(target)))
            continue
        done.append(part)
    return root.joinpath(*done)


def make_dirs(root: Path, rel: str | PurePosixPath, mode: int | None = None) -> Path:
    """``mkdir -p`` of ``rel`` inside ``root`` (symlinks followed within it); chmod the last."""
    root.mkdir(parents=True, exist_ok=True)  # the root itself is the caller's, not the image's
    path, done = root, PurePosixPath()
    for part in _parts(rel):
        path = resolve_in(root, done / part)
        done = PurePosixPath(path.relative_to(root).as_posix())
        if not path.exists():  # resolve_in: no component of it is a symlink
            path.mkdir(parents=True)
        elif not path.is_dir():
            raise PathEscapes(f"{rel}: {path.relative_to(root)} is not a directory")
    if mode is not None:
        os.chmod(path, mode)
    return path


def place(root: Path, rel: str | PurePosixPath) -> Path:
    """Where a new file ``rel`` goes: its parent resolved (and made) inside ``root``; an
    existing file or symlink there is removed, so the write replaces it (as dpkg does) and
    never follows it."""
    name = PurePosixPath(rel).name
    if name in ("", ".", ".."):
        raise PathEscapes(f"{rel}: not a file name")
    target = make_dirs(root, PurePosixPath(rel).parent) / name
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        raise PathEscapes(f"{rel}: a directory or special file is in the way")
    return target


def write_file(root: Path, rel: str | PurePosixPath, body: bytes | str, mode: int = 0o644) -> Path:
    target = place(root, rel)
    if isinstance(body, str):
        body = body.encode()
    with open(target, "xb") as out:  # O_EXCL: never through a symlink
        out.write(body)
    os.chmod(target, mode)
    return target


def read_file(root: Path, rel: str | PurePosixPath) -> bytes:
    """A regular file of the rootfs (through its symlinks, resolved inside ``root``)."""
    path = resolve_in(root, rel)
    if not path.is_file() or path.is_symlink():
        raise PathEscapes(f"{rel}: not a regular file inside the image root")
    return path.read_bytes()


def remove_tree(root: Path, rel: str | PurePosixPath) -> None:
    """``rm -rf`` of ``rel`` resolved inside ``root`` (a symlink itself is just unlinked)."""
    path = resolve_in(root, rel, follow_last=False)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _member_name(member: tarfile.TarInfo) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise PathEscapes(f"member {member.name!r}: absolute or '..' name")
    return PurePosixPath(*_parts(name)) if _parts(name) else PurePosixPath(".")


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path,
                    dirs: list[tuple[Path, tarfile.TarInfo]]) -> None:
    name = _member_name(member)
    if member.isdir():
        dirs.append((make_dirs(root, name), member))
    elif member.isreg():
        source = archive.extractfile(member)
        if source is None:
            raise StepFailed(f"member {member.name!r}: unreadable")
        target = place(root, name)
        with source, open(target, "xb") as out:  # O_EXCL: never through a symlink
            shutil.copyfileobj(source, out)
        os.chmod(target, member.mode & 0o7777)
        os.utime(target, (member.mtime, member.mtime))
    elif member.issym():
        target = place(root, name)
        # the link may point anywhere: whoever follows it does so with resolve_in
        os.symlink(member.linkname, target)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
    else:
        raise PathEscapes(f"member {member.name!r}: type {member.type!r} is not a file, "
                          "directory or symlink")


def _set_dir_stats(pending: list[tuple[Path, tarfile.TarInfo]], keep: PurePosixPath | None,
                   ) -> None:
    """Give the pending directories that are not ancestors of ``keep`` their mode and mtime."""
    for path, member in list(reversed(pending)):
        name = _member_name(member)
        if keep is not None and (name == PurePosixPath(".") or name in keep.parents):
            continue
        os.chmod(path, member.mode & 0o7777)
        os.utime(path, (member.mtime, member.mtime))
        pending.remove((path, member))


def extract_tar(data: bytes | IO[bytes], root: Path) -> None:
    """Extract an uncompressed tar stream into ``root``, every entry placed by resolve_in.

    Modes and mtimes are the members' and a directory gets its own once extraction has left
    it, as GNU tar (run by ``dpkg-deb -x``) does: a member added to it later, such as the
    symlinks dpkg-deb puts at an archive's end, leaves it the extraction's mtime (clamped to
    SOURCE_DATE_EPOCH in the layer). So the layers' bytes stay what they were before this
    extractor replaced ``dpkg-deb -x``."""
    fileobj = io.BytesIO(data) if isinstance(data, bytes) else data
    root.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, tarfile.TarInfo]] = []
    with tarfile.open(fileobj=fileobj, mode="r|") as archive:
        for member in archive:
            _set_dir_stats(pending, _member_name(member))
            _extract_member(archive, member, root, pending)
    _set_dir_stats(pending, None)


def extract_deb(deb: Path, root: Path) -> None:
    """The data of ``deb`` into ``root`` (``dpkg-deb --fsys-tarfile``, read by extract_tar)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        extract_tar(proc.stdout, root)
    finally:
        proc.stdout.close()
        err = proc.stderr.read() if proc.stderr else b""
        code = proc.wait()
    if code != 0:
        raise StepFailed(f"dpkg-deb --fsys-tarfile {deb.name} failed ({code}): "
                         f"{err.decode(errors='replace')[-500:]}")


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
