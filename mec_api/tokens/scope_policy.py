"""Which scopes a workload may have: ``policies/tokens.rego`` over the operator's grants.

Grants come from a YAML file (``UMEC_TOKEN_GRANTS``)::

    grants:
      - namespaces: ["tenant-*"]          # globs
        service_accounts: ["*"]
        scopes: [sensor.read, inference.classify]

Rego (embedded, regopy) takes the decision: granted = requested ∩ matching grants, minus what
the policy forbids. The evaluator is compiled once; decisions are memoised by their input (a
workload asks for the same scopes every few minutes). The interpreter is not thread-safe, so a
lock serialises queries. Any failure is :class:`PolicyFailed`: nothing is issued.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mec_api.scopes import ALL_SCOPES
from mec_api.tokens.errors import PolicyFailed

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
DECISION_QUERY = "data.umec.tokens.decision"


@dataclass(frozen=True)
class ScopeDecision:
    granted: tuple[str, ...]
    denied: tuple[str, ...]


class GrantsMalformed(ValueError):
    pass


def load_grants(text: str, where: str = "grants") -> list[dict[str, list[str]]]:
    """Parse and check a grants document (fails at start-up, not on the first token)."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise GrantsMalformed(f"{where}: not YAML ({e})") from None
    grants = doc.get("grants", []) if isinstance(doc, dict) else None
    if not isinstance(grants, list):
        raise GrantsMalformed(f"{where}: expected a mapping with a 'grants' list")
    out = []
    for i, g in enumerate(grants):
        if not isinstance(g, dict) or set(g) - {"namespaces", "service_accounts", "scopes"}:
            raise GrantsMalformed(f"{where}: grants[{i}] must have only namespaces, "
                                  f"service_accounts and scopes")
        entry = {}
        for field, default in (("namespaces", None), ("service_accounts", ["*"]),
                               ("scopes", None)):
            value = g.get(field, default)
            if not isinstance(value, list) or not value or \
                    not all(isinstance(v, str) and v for v in value):
                raise GrantsMalformed(f"{where}: grants[{i}].{field} must be a non-empty "
                                      f"list of strings")
            entry[field] = value
        unknown = set(entry["scopes"]) - ALL_SCOPES
        if unknown:
            raise GrantsMalformed(f"{where}: grants[{i}] names unknown scopes "
                                  f"{sorted(unknown)}; known: {sorted(ALL_SCOPES)}")
        out.append(entry)
    return out


class ScopePolicy:
    def __init__(self, grants: Sequence[dict[str, list[str]]],
                 modules: Iterable[Path] | None = None, cache_size: int = 4096) -> None:
        import regopy  # the C++ evaluator loads only when tokens are issued

        self.grants = list(grants)
        paths = list(modules) if modules is not None else [POLICY_DIR / "tokens.rego"]
        self._interp = regopy.Interpreter()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, ScopeDecision] = OrderedDict()
        self._cache_size = cache_size
        self.queries = 0
        try:
            for p in paths:
                self._interp.add_module(p.stem, p.read_text())
            self._bundle = self._interp.build(DECISION_QUERY)
        except (OSError, regopy.RegoError) as e:
            raise PolicyFailed(f"loading {[str(p) for p in paths]}: {e}") from None

    def decide(self, *, namespace: str, service_account: str, node: str,
               requested: Sequence[str]) -> ScopeDecision:
        rego_input: dict[str, Any] = {
            "workload": {"namespace": namespace, "service_account": service_account,
                         "node": node},
            "requested": sorted(set(requested)), "known_scopes": sorted(ALL_SCOPES),
            "grants": self.grants}
        key = json.dumps(rego_input, sort_keys=True)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            decision = self._evaluate(rego_input)
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return decision

    def _evaluate(self, rego_input: dict[str, Any]) -> ScopeDecision:
        try:
            self._interp.set_input(rego_input)
            self.queries += 1
            out = self._interp.query_bundle(self._bundle)
            if not out.ok():
                raise PolicyFailed(str(out)[:300])
            raw = out.results[0].expressions[0] if out.results and \
                out.results[0].expressions else None
        except PolicyFailed:
            raise
        except Exception as e:  # regopy raises RegoError or JSON errors from its output
            raise PolicyFailed(f"{type(e).__name__}: {str(e)[:300]}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("granted"), list) \
                or not isinstance(raw.get("denied"), list):
            raise PolicyFailed(f"decision has the wrong shape: {str(raw)[:200]}")
        granted = tuple(str(s) for s in raw["granted"])
        requested = set(rego_input["requested"])
        if not set(granted) <= requested:  # a policy may narrow, never widen
            extra = sorted(set(granted) - requested)
            raise PolicyFailed(f"policy granted unrequested scopes {extra}")
        return ScopeDecision(granted, tuple(str(s) for s in raw["denied"]))
