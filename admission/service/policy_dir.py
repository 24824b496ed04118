"""The webhook's image policies from a directory (``UMEC_ADMISSION_POLICY_DIR``)."""

from __future__ import annotations

from pathlib import Path

from admission.core.policy import NoMatch, PolicySet, load_policies_yaml


def load_policy_set(directory: Path | None, default_no_match: NoMatch = "deny") -> PolicySet:
    """Every ``*.yaml`` in ``directory`` (keys may reference files relative to it)."""
    docs = ""
    if directory is not None:
        docs = "\n---\n".join(p.read_text(encoding="utf-8")
                              for p in sorted(directory.glob("*.yaml")))

    def load_file(name: str) -> bytes:
        assert directory is not None
        path = (directory / name).resolve()
        if directory.resolve() not in path.parents:
            raise ValueError(f"key file {name!r} is outside the policy directory")
        return path.read_bytes()
    return load_policies_yaml(docs, default_no_match=default_no_match, load_file=load_file)
