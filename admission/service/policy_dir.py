"""The webhook's image policies from a directory (``UMEC_ADMISSION_POLICY_DIR``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from admission.core.policy import (
    FileLoader,
    NoMatch,
    PolicyInvalid,
    PolicySet,
    load_policies,
)


def policy_documents(directory: Path | None) -> tuple[list[Any], FileLoader | None]:
    """The documents of every ``*.yaml`` in ``directory`` (a ``kind: List`` gives its items)
    and the loader of the key files they name (relative to it, never outside)."""
    if directory is None:
        return [], None
    docs: list[Any] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            parsed = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as e:
            raise PolicyInvalid(f"{path.name}: YAML: {e}") from None
        for d in parsed:
            if isinstance(d, dict) and d.get("kind") == "List":
                docs.extend(d.get("items") or [])
            elif d is not None:
                docs.append(d)
    root = directory.resolve()

    def load_file(name: str) -> bytes:
        path = (root / name).resolve()
        if root not in path.parents:
            raise ValueError(f"key file {name!r} is outside the policy directory")
        return path.read_bytes()
    return docs, load_file


def load_policy_set(directory: Path | None, default_no_match: NoMatch = "deny") -> PolicySet:
    """Every ``*.yaml`` in ``directory`` (keys may reference files relative to it)."""
    docs, load_file = policy_documents(directory)
    return load_policies(docs, default_no_match=default_no_match, load_file=load_file)
