"""The lock of an image build's inputs: every Debian package and wheel, pinned by SHA-256.

``build-images.sh`` writes it after resolving (``--update-lock``) and otherwise reads it and
downloads exactly what it pins, refusing any file whose hash differs. The format (JSON)::

    {"format": 1, "suite": "bookworm",
     "images": {IMAGE: {ARCH: {"debs": [PIN...], "wheels": [PIN...]}}},
     "sources": [PIN...], "build_tools": [PIN...]}

with ``PIN = {"name", "version", "filename", "sha256"}``. ``filename`` is a bare file name (it
is joined to a cache directory, so a path in it is refused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scripts.imagebuild.errors import LockInvalid

FORMAT = 1
ARCHES = ("amd64", "arm64", "armhf")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9.+:~_-]{1,128}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+%~-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass(frozen=True, order=True)
class Pin:
    name: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class ArchPins:
    debs: tuple[Pin, ...]
    wheels: tuple[Pin, ...]


@dataclass(frozen=True)
class Lock:
    suite: str
    images: Mapping[str, Mapping[str, ArchPins]]
    sources: tuple[Pin, ...] = ()
    build_tools: tuple[Pin, ...] = ()

    def pins(self, image: str, arch: str) -> ArchPins | None:
        return self.images.get(image, {}).get(arch)


def _field(raw: Mapping[str, Any], key: str, pattern: re.Pattern[str], where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise LockInvalid(f"{where}: {key} {value!r} is not valid")
    return value


def _pin(raw: Any, where: str) -> Pin:
    if not isinstance(raw, dict) or set(raw) != {"name", "version", "filename", "sha256"}:
        raise LockInvalid(f"{where}: a pin has exactly name, version, filename and sha256")
    return Pin(_field(raw, "name", _NAME, where), _field(raw, "version", _VERSION, where),
               _field(raw, "filename", _FILENAME, where), _field(raw, "sha256", _SHA256, where))


def _pins(raw: Any, where: str) -> tuple[Pin, ...]:
    if not isinstance(raw, list):
        raise LockInvalid(f"{where}: expected a list of pins")
    pins = tuple(_pin(item, f"{where}[{i}]") for i, item in enumerate(raw))
    names = [p.filename for p in pins]
    if len(set(names)) != len(names):
        raise LockInvalid(f"{where}: a file is pinned twice")
    return tuple(sorted(pins))


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise LockInvalid(f"{where}: expected an object")
    return raw


def _images(raw: Any) -> dict[str, dict[str, ArchPins]]:
    images: dict[str, dict[str, ArchPins]] = {}
    for image, arches in _object(raw, "images").items():
        if not _IMAGE.match(image):
            raise LockInvalid(f"images: image name {image!r} is not valid")
        images[image] = {}
        for arch, pins in _object(arches, image).items():
            if arch not in ARCHES:
                raise LockInvalid(f"{image}: architecture {arch!r} is not one of {ARCHES}")
            body = _object(pins, f"{image}.{arch}")
            if set(body) != {"debs", "wheels"}:
                raise LockInvalid(f"{image}.{arch}: has exactly debs and wheels")
            images[image][arch] = ArchPins(_pins(body["debs"], f"{image}.{arch}.debs"),
                                           _pins(body["wheels"], f"{image}.{arch}.wheels"))
    return images


def parse_lock(text: str) -> Lock:
    """The lock in ``text``; anything else than a well-formed lock raises LockInvalid."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LockInvalid(f"not JSON: {exc}") from None
    body = _object(raw, "lock")
    if body.get("format") != FORMAT:
        raise LockInvalid(f"format {body.get('format')!r} is not {FORMAT}")
    if set(body) != {"format", "suite", "images", "sources", "build_tools"}:
        raise LockInvalid(f"lock keys {sorted(body)} are not format, suite, images, sources, "
                          "build_tools")
    suite = _field(body, "suite", _IMAGE, "lock")
    return Lock(suite, _images(body["images"]), _pins(body["sources"], "sources"),
                _pins(body["build_tools"], "build_tools"))


def _pin_json(pins: tuple[Pin, ...]) -> list[dict[str, str]]:
    return [{"name": p.name, "version": p.version, "filename": p.filename, "sha256": p.sha256}
            for p in sorted(pins)]


def dump_lock(lock: Lock) -> str:
    """The lock as stable JSON (sorted; the same lock always gives the same bytes)."""
    images = {image: {arch: {"debs": _pin_json(p.debs), "wheels": _pin_json(p.wheels)}
                      for arch, p in sorted(arches.items())}
              for image, arches in sorted(lock.images.items())}
    body = {"format": FORMAT, "suite": lock.suite, "images": images,
            "sources": _pin_json(lock.sources), "build_tools": _pin_json(lock.build_tools)}
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


def with_arch(lock: Lock, image: str, arch: str, pins: ArchPins) -> Lock:
    """A copy of ``lock`` with one image/architecture's pins replaced."""
    images = {name: dict(arches) for name, arches in lock.images.items()}
    images.setdefault(image, {})[arch] = ArchPins(tuple(sorted(pins.debs)),
                                                  tuple(sorted(pins.wheels)))
    return Lock(lock.suite, images, lock.sources, lock.build_tools)


def _flat(lock: Lock) -> dict[str, Pin]:
    found = {f"sources {p.filename}": p for p in lock.sources}
    found.update({f"build_tools {p.filename}": p for p in lock.build_tools})
    for image, arches in lock.images.items():
        for arch, pins in arches.items():
            for kind, group in (("debs", pins.debs), ("wheels", pins.wheels)):
                found.update({f"{image}.{arch}.{kind} {p.filename}": p for p in group})
    return found


def lock_changes(old: Lock, new: Lock) -> list[str]:
    """Each input pinned differently in ``new`` than in ``old`` (added, removed or another
    SHA-256), as ``"<where> <filename>: <what>"``; empty when the locks pin the same."""
    before, after = _flat(old), _flat(new)
    changes = [f"{key}: not in the lock" for key in sorted(set(after) - set(before))]
    changes += [f"{key}: pinned but not used" for key in sorted(set(before) - set(after))]
    changes += [f"{key}: sha256 {after[key].sha256}, the lock pins {before[key].sha256}"
                for key in sorted(set(before) & set(after)) if before[key] != after[key]]
    if old.suite != new.suite:
        changes.append(f"suite {new.suite}, the lock has {old.suite}")
    return changes
