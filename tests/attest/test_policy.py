"""Appraisal policy documents: strict parsing that names the offending key."""

from __future__ import annotations

import pytest

from attest.core.policy import AppraisalPolicy, PolicyInvalid, check_pcr_values

GOOD = {"name": "pi", "selection": {"sha256": [0, 14]}, "pcrs": {"sha256": {14: ["ab" * 32]}}}


def test_good_policy() -> None:
    p = AppraisalPolicy.from_dict(GOOD)
    assert p.selection == {"sha256": frozenset({0, 14})}
    assert check_pcr_values(p, {"sha256": {0: bytes(32), 14: bytes.fromhex("ab" * 32)}}) == []
    failures = check_pcr_values(p, {"sha256": {0: bytes(32), 14: bytes(32)}})
    assert [f.check for f in failures] == ["policy.pcr_value"]
    assert [f.check for f in check_pcr_values(p, {})] == ["policy.pcr_value"]


@pytest.mark.parametrize(("doc", "named"), [
    ({**GOOD, "pcr": {}}, "unknown keys"),
    ({**GOOD, "name": ""}, "name"),
    ({**GOOD, "selection": {}}, "selection"),
    ({**GOOD, "selection": {"md5": [0]}}, "selection: unknown PCR bank"),
    ({**GOOD, "selection": {"sha256": [24]}}, "outside 0..23"),
    ({**GOOD, "pcrs": {"sha256": {14: ["zz"]}}}, "pcrs.sha256.14"),
    ({**GOOD, "pcrs": {"sha256": {14: ["ab" * 20]}}}, "not a sha256 digest"),
    ({**GOOD, "pcrs": {"sha256": {7: ["ab" * 32]}}}, "not in selection"),
    ({**GOOD, "pcrs": {"sha256": {14: []}}}, "non-empty list"),
    ({**GOOD, "interval_seconds": -1}, "interval_seconds"),
    ({**GOOD, "eventlog": {"bank": "sha256", "pcrz": {}}}, "eventlog"),
])
def test_bad_policies_name_the_key(doc: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyInvalid, match=named):
        AppraisalPolicy.from_dict(doc)


def test_not_yaml() -> None:
    with pytest.raises(PolicyInvalid, match="not YAML"):
        AppraisalPolicy.from_yaml("name: [unclosed")
