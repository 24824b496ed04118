"""Debian dependency fields and the closure of what an image needs.

apt resolves dependencies as if installing onto an empty system, so it also brings packages
only ``dpkg`` itself needs (``tar``, ``debconf``, ``perl-base``). The image runs no package
manager and no maintainer script: the closure walks ``Pre-Depends``/``Depends`` from the
image's root packages, skipping a deny list, and only that closure is extracted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scripts.imagebuild.errors import LockInvalid

# Needed to install or configure packages, never to run the image.
NOT_AT_RUNTIME = frozenset({"dpkg", "tar", "debconf", "perl-base", "openssl", "debianutils",
                            "install-info", "ucf", "sensible-utils",
                            # tpm2-tss's device permissions are the host's udev rules
                            "tpm-udev", "udev", "adduser", "passwd"})

_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_RELATION = re.compile(r"^(?P<name>[^\s(:\[<]+)(?::[a-z0-9-]+)?\s*(?:\((?P<version>[^)]*)\))?"
                       r"\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$")


@dataclass(frozen=True)
class DebInfo:
    """What the closure needs of one binary package's control fields."""

    name: str
    version: str
    depends: tuple[tuple[str, ...], ...] = ()
    provides: tuple[str, ...] = field(default=())


def parse_relations(text: str) -> tuple[tuple[str, ...], ...]:
    """``a (>= 1), b | c:any`` -> ``(("a",), ("b", "c"))``: names only, in order.

    Versions, architecture qualifiers and restrictions are dropped (apt already chose
    versions that satisfy them); a relation that is not one raises :class:`LockInvalid`."""
    groups: list[tuple[str, ...]] = []
    for group in text.split(","):
        if not group.strip():
            continue
        names = []
        for alternative in group.split("|"):
            match = _RELATION.match(alternative.strip())
            if match is None or not _NAME.match(match["name"]):
                raise LockInvalid(f"not a Debian package relation: {alternative.strip()!r}")
            names.append(match["name"])
        groups.append(tuple(names))
    return tuple(groups)


def parse_control(text: str) -> DebInfo:
    """A package's ``Package``, ``Version``, ``Pre-Depends``+``Depends`` and ``Provides``."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = value.strip()
    if "package" not in fields or "version" not in fields:
        raise LockInvalid("control data without Package or Version")
    depends = parse_relations(fields.get("pre-depends", "")) + \
        parse_relations(fields.get("depends", ""))
    provides = tuple(g[0] for g in parse_relations(fields.get("provides", "")))
    return DebInfo(fields["package"], fields["version"], depends, provides)


def _providers(packages: Mapping[str, DebInfo]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in sorted(packages):
        for virtual in packages[name].provides:
            found.setdefault(virtual, name)
    return {**found, **{name: name for name in packages}}


def closure(roots: Iterable[str], packages: Mapping[str, DebInfo],
            deny: frozenset[str] = NOT_AT_RUNTIME) -> tuple[list[str], list[str]]:
    """The packages reachable from ``roots`` (sorted) and the dependencies none satisfies.

    For ``a | b`` the first alternative present is taken. A denied package is neither taken
    nor missing."""
    providers = _providers(packages)
    taken: set[str] = set()
    missing: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in deny or name in taken:
            continue
        real = providers.get(name)
        if real is None:
            missing.add(name)
            continue
        taken.add(real)
        for group in packages[real].depends:
            if any(alt in deny for alt in group):
                continue
            chosen = next((alt for alt in group if alt in providers), None)
            if chosen is None:
                missing.add(" | ".join(group))
            else:
                todo.append(chosen)
    return sorted(taken), sorted(missing)
