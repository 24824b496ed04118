"""Wheel tags: parse a ``*.dist-info/WHEEL`` file and check its tags against an architecture."""

from __future__ import annotations

import re
from dataclasses import dataclass

from scripts.imagebuild.errors import WrongArchitecture

# Debian architecture -> the machine name wheels use in their platform tag
WHEEL_MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
PYTHON = (3, 11)

_PLATFORM = re.compile(r"^(?:linux|manylinux1|manylinux2010|manylinux2014|manylinux_\d+_\d+)"
                       r"_(?P<machine>[a-z0-9_]+)$")
_CPYTHON = re.compile(r"^cp(?P<major>\d)(?P<minor>\d+)$")


@dataclass(frozen=True)
class WheelTag:
    python: str
    abi: str
    platform: str

    def __str__(self) -> str:
        return f"{self.python}-{self.abi}-{self.platform}"


def parse_wheel_file(text: str) -> list[WheelTag]:
    """Every ``Tag:`` of a WHEEL file, compressed tag sets (``py2.py3``) expanded.

    A WHEEL file without a tag, or a tag that is not ``python-abi-platform``, raises
    :class:`WrongArchitecture`: an unreadable tag is never taken to match."""
    tags: list[WheelTag] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() != "tag":
            continue
        parts = value.strip().split("-")
        if len(parts) != 3 or not all(parts):
            raise WrongArchitecture(f"wheel tag {value.strip()!r} is not python-abi-platform")
        tags.extend(WheelTag(py, abi, plat) for py in parts[0].split(".")
                    for abi in parts[1].split(".") for plat in parts[2].split("."))
    if not tags:
        raise WrongArchitecture("WHEEL file has no Tag line")
    return tags


def _python_ok(tag: WheelTag) -> bool:
    """Whether CPython 3.11 can load a wheel with this tag (python and ABI parts)."""
    if tag.abi not in ("none", "abi3", f"cp{PYTHON[0]}{PYTHON[1]}"):
        return False
    if tag.python.startswith("py"):
        return tag.python in (f"py{PYTHON[0]}", f"py{PYTHON[0]}{PYTHON[1]}")
    match = _CPYTHON.match(tag.python)
    if match is None or int(match["major"]) != PYTHON[0]:
        return False
    minor = int(match["minor"])
    return minor <= PYTHON[1] if tag.abi == "abi3" else minor == PYTHON[1]


def _platform_ok(tag: WheelTag, arch: str) -> bool:
    if tag.platform == "any":
        return True
    match = _PLATFORM.match(tag.platform)
    return match is not None and match["machine"] == WHEEL_MACHINE[arch]


def tag_problems(tags: list[WheelTag], arch: str) -> list[str]:
    """Why a wheel with these tags does not fit CPython 3.11 on ``arch`` (empty: it fits).

    Every tag's platform must be ``any`` or ``arch``'s machine (a tag naming another machine
    means a binary for it), and at least one tag must be loadable by CPython 3.11 (a
    ``py2.py3`` wheel also carries a ``py2`` tag)."""
    problems = [f"{tag}: platform {tag.platform} is not {WHEEL_MACHINE[arch]} or any"
                for tag in tags if not _platform_ok(tag, arch)]
    if not any(_python_ok(tag) for tag in tags):
        problems.append(f"{', '.join(map(str, tags))}: no tag CPython 3.11 can load")
    return problems


def check_wheel_file(text: str, arch: str, *, where: str) -> None:
    """Raise :class:`WrongArchitecture` unless every tag of the WHEEL file fits ``arch``."""
    problems = tag_problems(parse_wheel_file(text), arch)
    if problems:
        raise WrongArchitecture(f"{where}: {'; '.join(problems)}")
