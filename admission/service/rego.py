"""Evaluate ``policies/admission.rego``, embedded with regopy: the one admission decision.

The Python side has already verified signatures and evaluated the ImagePolicies
(:mod:`admission.core.policy`); Rego takes the final decision over the pod and those results,
so operators can add rules (e.g. forbid ``:latest`` even pinned) without touching code.

Embedded evaluation (:class:`RegoEvaluator`) queries ``data.umec.admission.decision``, a rule
that always has a value; a bare rule left at its default may come back *undefined* from
rego-cpp. Two regopy 1.5 quirks shape the input: strings are written into its JSON output
unescaped (a ``"`` in any string would corrupt the result, so :func:`_clean` maps quotes,
backslashes and control characters away before evaluation), and ``with input as`` crashes the
evaluator (the tests call the ``decide(inp)`` function instead). The interpreter is not
thread-safe: one lock serialises queries. Decisions are memoised by the canonical input (the
warm path: the same pod template verified against the same policy generation), because one
query costs a few milliseconds.

Any evaluation failure is :class:`RegoFailed`, and the webhook denies (fails closed). There is
no OPA-server path: nothing wired one, and no OPA server can be run here to test it against
(docs/decisions.md, "Issue 11: the admission domain's shape").
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admission.core.errors import AdmissionError

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
DECISION_QUERY = "data.umec.admission.decision"
_CONTROL = re.compile(r'["\\\x00-\x1f\x7f]')


class RegoFailed(AdmissionError):
    check = "rego.failed"
    hint = "The admission Rego policy could not be evaluated; check policies/admission.rego."


@dataclass(frozen=True)
class RegoDecision:
    allowed: bool
    deny: tuple[str, ...]
    warnings: tuple[str, ...]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _CONTROL.sub(lambda m: "'" if m.group() == '"' else
                            "/" if m.group() == "\\" else " ", value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _decision(raw: Any) -> RegoDecision:
    if not isinstance(raw, dict) or not isinstance(raw.get("allowed"), bool) \
            or not isinstance(raw.get("deny"), list) or not isinstance(raw.get("warnings"), list):
        raise RegoFailed(f"decision has the wrong shape: {str(raw)[:200]}")
    deny = tuple(str(m) for m in raw["deny"])
    # A policy that says allowed while listing denials is contradictory: fail closed.
    return RegoDecision(raw["allowed"] and not deny, deny, tuple(str(m) for m in raw["warnings"]))


class RegoEvaluator:
    """Embedded evaluation of the admission policy (and of its Rego unit tests)."""

    def __init__(self, modules: Iterable[Path] | None = None, cache_size: int = 4096) -> None:
        import regopy  # the C++ evaluator loads only when Rego is used

        self._paths = list(modules) if modules is not None else [POLICY_DIR / "admission.rego"]
        self._interp = regopy.Interpreter()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, RegoDecision] = OrderedDict()
        self._cache_size = cache_size
        self.queries = 0
        try:
            for p in self._paths:
                self._interp.add_module(p.stem, p.read_text())
            # Compile once into a bundle: a query against the prepared plan costs ~1 ms, a
            # plain query (which recompiles the modules) ~10 ms. A broken policy fails here, at
            # start-up, not on the first pod.
            self._bundle = self._interp.build(DECISION_QUERY)
            self._query(DECISION_QUERY)
        except (OSError, regopy.RegoError) as e:
            raise RegoFailed(f"loading {[str(p) for p in self._paths]}: {e}") from None

    def _query(self, query: str, *, prepared: bool = False) -> Any:
        out = self._interp.query_bundle(self._bundle) if prepared else self._interp.query(query)
        if not out.ok():
            raise RegoFailed(f"{query}: {str(out)[:300]}")
        if not out.results or not out.results[0].expressions:
            return None  # undefined
        return out.results[0].expressions[0]

    def decide(self, rego_input: dict[str, Any]) -> RegoDecision:
        clean = _clean(rego_input)
        key = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            try:
                self._interp.set_input(clean)
                self.queries += 1
                decision = _decision(self._query(DECISION_QUERY, prepared=True))
            except RegoFailed:
                raise
            except Exception as e:  # regopy raises RegoError or JSON errors from its output
                raise RegoFailed(f"{type(e).__name__}: {str(e)[:300]}") from None
            self._cache[key] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return decision

    def run_tests(self, package: str) -> dict[str, bool]:
        """Query every ``test_*`` rule of ``package`` (loaded among the modules): the
        embedded stand-in for ``opa test``; a rule that is undefined or false failed."""
        names = sorted({m.group(1) for p in self._paths
                        for m in re.finditer(r"^(test_\w+)\b", p.read_text(), re.M)})
        results = {}
        with self._lock:
            for name in names:
                try:
                    results[name] = self._query(f"data.{package}.{name}") is True
                except RegoFailed:
                    results[name] = False
        return results

