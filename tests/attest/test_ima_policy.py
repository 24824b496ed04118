"""Keylime runtime policies (issue 13): loading the JSON `keylime-policy create runtime` writes,
and appraisal of each IMA entry; every failure names the path, the digest and the check."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.ima import RuntimePolicyInvalid
from attest.core.ima.encode import make_entry
from attest.core.ima.policy import RuntimePolicy, appraise_entries, keylime_policy

BASH = hashlib.sha256(b"bash").digest()
CERT = b"0\x82 certificate"

# As keylime-policy create runtime writes it (keys in its order, an empty verification-keys).
KEYLIME_DOC = {
    "meta": {"version": 1, "generator": 3, "timestamp": "2025-01-01 00:00:00.000000"},
    "release": 0,
    "digests": {"/usr/bin/bash": [BASH.hex(), "aa" * 32],
                "/usr/bin/old": [hashlib.sha1(b"old").hexdigest()],
                "boot_aggregate": ["00" * 32]},
    "excludes": ["/var/log/.*", "/tmp/"],
    "keyrings": {".ima": [hashlib.sha256(CERT).hexdigest()]},
    "ima": {"ignored_keyrings": [".builtin_trusted_keys"], "log_hash_alg": "sha1",
            "dm_policy": None},
    "ima-buf": {"kexec-cmdline": [hashlib.sha256(b"root=/dev/sda").hexdigest()]},
    "verification-keys": "",
}


def _policy() -> RuntimePolicy:
    return RuntimePolicy.from_json(json.dumps(KEYLIME_DOC))


@pytest.mark.parametrize("entry", [
    make_entry("/usr/bin/bash", BASH),
    make_entry("/usr/bin/old", hashlib.sha1(b"old").digest(), template="ima"),
    make_entry("/usr/bin/bash", BASH, template="ima-sig", extra=b"\x03sig"),
    make_entry("/var/log/messages", b"\x01" * 32),
    make_entry("/var/log/wtmp", bytes(32), violation=True),
    make_entry(".ima", hashlib.sha256(CERT).digest(), template="ima-buf", extra=CERT),
    make_entry(".builtin_trusted_keys", hashlib.sha256(b"k").digest(), template="ima-buf",
               extra=b"k"),
    make_entry("kexec-cmdline", hashlib.sha256(b"root=/dev/sda").digest(), template="ima-buf",
               extra=b"root=/dev/sda"),
], ids=lambda e: f"{e.template}:{e.path}")
def test_allowed_entries_pass(entry) -> None:
    assert _policy().appraise(entry, 3) is None


@pytest.mark.parametrize(("entry", "check"), [
    (make_entry("/usr/bin/bash", b"\x66" * 32), "ima.digest_not_allowed"),
    (make_entry("/usr/bin/evil", BASH), "ima.path_not_allowed"),
    (make_entry("/usr/bin/bash", bytes(32), violation=True), "ima.violation"),
    (make_entry("/var/logx", BASH), "ima.path_not_allowed"),
    (make_entry(".ima", hashlib.sha256(b"other").digest(), template="ima-buf",
                extra=b"other"), "ima.keyring"),
    (make_entry(".ima", hashlib.sha256(CERT).digest(), template="ima-buf",
                extra=b"swapped"), "ima.buf"),
    (make_entry("dm_table_load", hashlib.sha256(b"t").digest(), template="ima-buf",
                extra=b"t"), "ima.buf"),
], ids=lambda v: v if isinstance(v, str) else v.path)
def test_failures_name_path_digest_and_check(entry, check: str) -> None:
    failure = _policy().appraise(entry, 7)
    assert failure is not None and failure.check == check
    assert entry.path in failure.detail and entry.digest.hex() in failure.detail
    assert "#7" in failure.detail and failure.hint


def test_appraise_entries_numbers_entries_in_the_full_list() -> None:
    entries = [make_entry("/usr/bin/bash", BASH), make_entry("/usr/bin/evil", BASH)]
    (failure,) = appraise_entries(_policy(), entries, first_index=100)
    assert "#101" in failure.detail and "/usr/bin/evil" in failure.detail


def test_ignore_all_keyrings() -> None:
    doc = {**KEYLIME_DOC, "ima": {"ignored_keyrings": ["*"]}}
    policy = RuntimePolicy.from_dict(doc)
    key = make_entry(".ima", hashlib.sha256(b"x").digest(), template="ima-buf", extra=b"x")
    assert policy.appraise(key, 0) is None


def test_helper_writes_a_loadable_keylime_document() -> None:
    doc = keylime_policy({"/x": [BASH.hex()]}, excludes=["/tmp/.*"])
    policy = RuntimePolicy.from_json(json.dumps(doc))
    assert policy.appraise(make_entry("/x", BASH), 0) is None


@pytest.mark.parametrize(("change", "where"), [
    ({"meta": {"version": 2}}, "meta.version"),
    ({"meta": None}, "meta.version"),
    ({"digests": {"/x": ["zz"]}}, "digests./x"),
    ({"digests": {"/x": ["abc"]}}, "digests./x"),
    ({"digests": {"/x": "aa" * 32}}, "digests./x"),
    ({"excludes": ["(unclosed"]}, "excludes"),
    ({"ima": {"log_hash_alg": "md4"}}, "ima.log_hash_alg"),
    ({"ima": {"surprise": 1}}, "ima:"),
    ({"allowlist": {}}, "unknown keys"),
    ({"verification-keys": 3}, "verification-keys"),
])
def test_invalid_documents_name_the_key(change: dict, where: str) -> None:
    with pytest.raises(RuntimePolicyInvalid) as err:
        RuntimePolicy.from_dict({**KEYLIME_DOC, **change})
    assert err.value.detail.startswith(where) and err.value.check == "policy.runtime"


def test_not_json() -> None:
    with pytest.raises(RuntimePolicyInvalid, match="not JSON"):
        RuntimePolicy.from_json("{")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(KEYLIME_DOC), "x"]), _json, max_size=6))
def test_arbitrary_documents_load_or_are_refused_typed(doc: dict) -> None:
    with contextlib.suppress(RuntimePolicyInvalid):
        RuntimePolicy.from_dict({"meta": {"version": 1}, **doc})


def test_the_appraise_entries_shortcut_never_passes_a_buffer_or_a_violation() -> None:
    """appraise_entries skips an allowed digest of an allowed path without calling appraise;
    an ima-buf entry or a violation whose name and digest happen to be in ``digests`` still
    fails as appraise decides."""
    doc = {**KEYLIME_DOC, "digests": {**KEYLIME_DOC["digests"],
                                      "/usr/bin/bash": [BASH.hex(), "00" * 32],
                                      ".ima": [hashlib.sha256(CERT).hexdigest()]}}
    policy = RuntimePolicy.from_dict(doc)
    entries = [make_entry(".ima", hashlib.sha256(CERT).digest(), template="ima-buf",
                          extra=b"swapped"),
               make_entry("/usr/bin/bash", bytes(32), violation=True),
               make_entry("/usr/bin/bash", BASH)]
    failures = appraise_entries(policy, entries)
    assert [f.check for f in failures] == ["ima.buf", "ima.violation"]
    assert [f.detail for f in failures] == [
        f.detail for f in (policy.appraise(e, i) for i, e in enumerate(entries)) if f]
