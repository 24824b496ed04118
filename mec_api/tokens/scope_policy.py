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

The evaluator's cost grows with the square of the scopes it is handed (3,000 took 9 s behind
the lock), so a request is capped (:data:`MAX_SCOPES` scope-tokens of at most
:data:`MAX_SCOPE_CHARS` characters, else :class:`ScopeInvalid` before any policy work) and only
its *known* scopes reach Rego: an unknown scope is never granted, so it is denied in Python, in
linear time, and Rego's work is bounded by the size of ``ALL_SCOPES`` whatever is asked.
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
from mec_api.tokens.errors import PolicyFailed, ScopeInvalid

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
DECISION_QUERY = "data.umec.tokens.decision"
# Caps on one request (docs/decisions.md): 4x the scopes that exist, 3x the longest one.
MAX_SCOPES = 32
MAX_SCOPE_CHARS = 64


def check_scope_caps(scopes: Sequence[str]) -> None:
    """Refuse more than :data:`MAX_SCOPES` scopes or one longer than :data:`MAX_SCOPE_CHARS`."""
    if len(scopes) > MAX_SCOPES:
        raise ScopeInvalid(f"{len(scopes)} scopes requested; at most {MAX_SCOPES} are accepted")
    longest = max(map(len, scopes), default=0)
    if longest > MAX_SCOPE_CHARS:
        raise ScopeInvalid(f"a scope of {longest} characters; at most {MAX_SCOPE_CHARS} are "
                           f"accepted")


def parse_scope(scope: str | None) -> tuple[str, ...] | None:
    """The distinct scope-tokens of an RFC 6749 §3.3 ``scope`` parameter, sorted (None when it
    is absent or blank); linear in its length, capped by :func:`check_scope_caps`."""
    if not scope:
        return None
    tokens = scope.split()
    check_scope_caps(tokens)
    return tuple(sorted(set(tokens))) or None


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
        self.scopes_evaluated = 0  # scopes handed to Rego, summed: the policy work done
        try:
            for p in paths:
                self._interp.add_module(p.stem, p.read_text())
            self._bundle = self._interp.build(DECISION_QUERY)
        except (OSError, regopy.RegoError) as e:
            raise PolicyFailed(f"loading {[str(p) for p in paths]}: {e}") from None

    def decide(self, *, namespace: str, service_account: str, node: str,
               requested: Sequence[str]) -> ScopeDecision:
        """Granted and denied scopes of ``requested`` (capped; unknown ones denied unasked)."""
        check_scope_caps(requested)
        asked = set(requested)
        known = asked & ALL_SCOPES
        decision = self._decide_known(namespace, service_account, node, sorted(known))
        if known == asked:
            return decision
        return ScopeDecision(decision.granted, tuple(sorted({*decision.denied, *asked - known})))

    def _decide_known(self, namespace: str, service_account: str, node: str,
                      requested: list[str]) -> ScopeDecision:
        rego_input: dict[str, Any] = {
            "workload": {"namespace": namespace, "service_account": service_account,
                         "node": node},
            "requested": requested, "known_scopes": sorted(ALL_SCOPES), "grants": self.grants}
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
            self.scopes_evaluated += len(rego_input["requested"])
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
