"""The evidence route's fast path (attest.service.api._evidence_fast, kernel.fastroute) parses
the body with pydantic's JSON parser; FastAPI's handler, which answers whatever the fast path
declines, parses it with ``json.loads`` and then validates. The fast path is only sound if
every body it accepts is one FastAPI would have accepted as the same value: checked here on
generated bodies (hypothesis), duplicate keys and odd numbers included. Then, over HTTP, that
both protocol routes answer a well-formed round and decline into FastAPI's 422s."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from attest.service.api import EvidenceBody
from tests.support.attack_env import Env

FIELDS = ["nonce", "quote", "signature", "pcrs", "event_log", "ima_log", "ima_offset"]
b64 = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**40),
                    st.floats(allow_nan=False, allow_infinity=False), b64,
                    st.text(max_size=12))
pcr_keys = st.one_of(st.integers(-1, 30).map(str), st.sampled_from(["01", " 1", "1.0", "x", ""]))
pcrs = st.dictionaries(st.sampled_from(["sha256", "sha1", ""]),
                       st.dictionaries(pcr_keys, st.one_of(st.text("0123456789abcdef",
                                                                   max_size=8), scalars),
                                       max_size=3), max_size=2)
values = st.one_of(scalars, pcrs, st.lists(scalars, max_size=2))


@st.composite
def bodies(draw: st.DrawFn) -> str:
    """A JSON object of (mostly) EvidenceBody's fields as text, sometimes with a key twice."""
    pairs = draw(st.lists(st.tuples(st.sampled_from([*FIELDS, "extra"]), values),
                          max_size=9))
    if draw(st.booleans()):
        pairs += [("nonce", draw(b64)), ("quote", draw(b64)), ("signature", draw(b64)),
                  ("pcrs", draw(pcrs))]
    draw(st.randoms()).shuffle(pairs)
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


def parsed(raw: str, fast: bool) -> Any:
    try:
        model = (EvidenceBody.model_validate_json(raw) if fast
                 else EvidenceBody.model_validate(json.loads(raw)))
    except (ValidationError, ValueError):
        return "refused"
    return model.model_dump()


@settings(max_examples=600, deadline=None)
@given(bodies())
def test_a_body_the_fast_path_accepts_is_what_fastapi_would_have_accepted(raw: str) -> None:
    fast = parsed(raw, fast=True)
    if fast != "refused":
        assert parsed(raw, fast=False) == fast, raw


def test_duplicate_keys_keep_the_last_in_both_parsers() -> None:
    first, last = base64.b64encode(b"first").decode(), base64.b64encode(b"last").decode()
    raw = (f'{{"nonce": "{first}", "nonce": "{last}", "quote": "", "signature": "", '
           f'"pcrs": {{}}}}')
    assert parsed(raw, fast=True) == parsed(raw, fast=False)
    assert parsed(raw, fast=True)["nonce"] == last


def test_malformed_protocol_requests_get_fastapis_errors(env: Env) -> None:
    """Declined by the fast path, answered by FastAPI's handler: a bad name, another media
    type, a body that does not validate; each 422 names the failing location as before."""
    bad_name = env.client.post("/attest/v1/nodes/Not_A_Name/challenge")
    assert bad_name.status_code == 422
    assert bad_name.json()["errors"][0]["loc"] == ["path", "node"]
    well_formed = json.dumps({"nonce": "AAAA", "quote": "AAAA", "signature": "AAAA",
                              "pcrs": {}}).encode()
    as_text = env.client.post("/attest/v1/nodes/n1/evidence", content=well_formed,
                              headers={"content-type": "text/plain"})
    assert as_text.status_code == 422, as_text.text
    assert as_text.json()["errors"][0]["loc"] == ["body"]
    invalid = env.client.post("/attest/v1/nodes/n1/evidence", json={"nonce": "***"})
    assert invalid.status_code == 422
    assert ["body", "nonce"] in [e["loc"] for e in invalid.json()["errors"]]
