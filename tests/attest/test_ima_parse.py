"""IMA measurement lists (issue 13): parse (binary and ASCII), template hashes, replay into
PCR 10, and the typed errors an attacker-controlled list can provoke. Hypothesis: arbitrary
bytes give entries or an ImaMalformed, never anything else."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.ima import (
    ImaMalformed,
    ImaPcrInvalid,
    ImaReplayMismatch,
    ImaTemplateHashMismatch,
    ImaTemplateUnknown,
    ImaTruncated,
    initial_pcr,
    parse_ascii,
    parse_binary,
    parse_list,
    replay_to_quote,
)
from attest.core.ima.encode import make_entry, to_ascii, to_binary

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHA = hashlib.sha256(b"bash").digest()


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _kernel_ima_ng(path: bytes, digest: bytes) -> bytes:
    """An ima-ng entry written by hand from the kernel's ima_measurements_show."""
    data = (_u32(8 + len(digest)) + b"sha256:\x00" + digest + _u32(len(path) + 1) + path
            + b"\x00")
    return (_u32(10) + hashlib.sha1(data).digest() + _u32(6) + b"ima-ng" + _u32(len(data))
            + data)


def _sample() -> list:
    return [
        make_entry("boot_aggregate", bytes(range(32))),
        make_entry("/usr/bin/bash", SHA),
        make_entry("/usr/bin/old", hashlib.sha1(b"old").digest(), template="ima"),
        make_entry("/usr/bin/signed", SHA, template="ima-sig", extra=b"\x03\x02sig"),
        make_entry(".ima", hashlib.sha256(b"cert").digest(), template="ima-buf", extra=b"cert"),
        make_entry("/var/log/x", bytes(32), violation=True),
    ]


def _extend(value: bytes, digest: bytes, alg: str) -> bytes:
    return hashlib.new(alg, value + digest).digest()


def test_hand_written_ima_ng_entry_parses_with_its_fields() -> None:
    (entry,) = parse_binary(_kernel_ima_ng(b"/usr/bin/bash", SHA))
    assert (entry.template, entry.path, entry.digest_alg, entry.digest) == (
        "ima-ng", "/usr/bin/bash", "sha256", SHA)


def test_ima_template_hash_pads_the_name_to_256_bytes() -> None:
    digest = hashlib.sha1(b"x").digest()
    raw = (_u32(10) + hashlib.sha1(digest + b"/bin/x".ljust(256, b"\x00")).digest()
           + _u32(3) + b"ima" + digest + _u32(6) + b"/bin/x")
    (entry,) = parse_binary(raw)
    assert (entry.path, entry.digest) == ("/bin/x", digest)


@pytest.mark.parametrize("entry", _sample(), ids=lambda e: e.template + e.path)
def test_binary_and_ascii_round_trip(entry) -> None:
    assert parse_binary(to_binary(entry)) == [entry]
    assert parse_ascii(to_ascii(entry)) == [entry]
    assert parse_list(to_ascii(entry)) == parse_list(to_binary(entry)) == [entry]


def test_replay_matches_the_kernel_in_both_banks_violation_as_all_ones() -> None:
    entries = _sample()
    sha1, sha256 = bytes(20), bytes(32)
    for e in entries:
        sha1 = _extend(sha1, b"\xff" * 20 if e.violation else hashlib.sha1(e.data).digest(),
                       "sha1")
        sha256 = _extend(sha256, b"\xff" * 32 if e.violation
                         else hashlib.sha256(e.data).digest(), "sha256")
    result = replay_to_quote(entries, initial_pcr(["sha1", "sha256"]),
                             {"sha1": sha1, "sha256": sha256})
    assert result.accepted == len(entries)
    assert result.pcr == {"sha1": sha1, "sha256": sha256}


def test_replay_is_incremental_and_accepts_the_quoted_prefix_only() -> None:
    entries = _sample()
    first = replay_to_quote(entries[:2], initial_pcr(["sha256"]),
                            {"sha256": _full(entries[:2])})
    # The agent read the list after the quote: two more entries than the quote covers.
    later = replay_to_quote(entries[2:], first.pcr, {"sha256": _full(entries[:4])})
    assert (first.accepted, later.accepted) == (2, 2)


def _full(entries: list) -> bytes:
    return replay_to_quote(entries, initial_pcr(["sha256"]),
                           {"sha256": _chain(entries)}).pcr["sha256"]


def _chain(entries: list) -> bytes:
    value = bytes(32)
    for e in entries:
        value = _extend(value, b"\xff" * 32 if e.violation
                        else hashlib.sha256(e.data).digest(), "sha256")
    return value


def test_a_list_no_prefix_of_which_matches_the_quote_is_refused() -> None:
    entries = _sample()
    with pytest.raises(ImaReplayMismatch) as err:
        replay_to_quote(entries, initial_pcr(["sha256"]), {"sha256": b"\x01" * 32})
    assert err.value.check == "ima.replay"


def test_a_list_shorter_than_the_quote_is_refused() -> None:
    entries = _sample()
    with pytest.raises(ImaReplayMismatch):
        replay_to_quote(entries[:3], initial_pcr(["sha256"]), {"sha256": _chain(entries)})


def test_banks_must_agree() -> None:
    entries = _sample()
    with pytest.raises(ImaReplayMismatch, match="sha256"):
        replay_to_quote(entries, initial_pcr(["sha1", "sha256"]),
                        {"sha1": _sha1_chain(entries), "sha256": b"\x02" * 32})


def _sha1_chain(entries: list) -> bytes:
    value = bytes(20)
    for e in entries:
        value = _extend(value, b"\xff" * 20 if e.violation else e.template_hash, "sha1")
    return value


def test_edited_entry_is_a_template_hash_mismatch() -> None:
    raw = bytearray(to_binary(make_entry("/usr/bin/bash", SHA)))
    raw[-3] ^= 1  # the path, after the template hash was computed
    with pytest.raises(ImaTemplateHashMismatch) as err:
        parse_binary(bytes(raw))
    assert err.value.check == "ima.template_hash" and "/usr/bin/barh" in err.value.detail


def test_edited_ascii_digest_is_a_template_hash_mismatch() -> None:
    line = to_ascii(make_entry("/usr/bin/bash", SHA)).replace(SHA.hex().encode(), b"00" * 32)
    with pytest.raises(ImaTemplateHashMismatch):
        parse_ascii(line)


def test_every_truncation_of_the_final_entry_is_typed() -> None:
    raw = b"".join(to_binary(e) for e in _sample())
    last = len(to_binary(_sample()[-1]))
    for cut in range(len(raw) - last + 1, len(raw)):
        with pytest.raises(ImaTruncated) as err:
            parse_binary(raw[:cut])
        assert err.value.check == "ima.truncated"
    with pytest.raises(ImaTruncated):
        parse_ascii(b"".join(to_ascii(e) for e in _sample())[:-1])


def test_unknown_template_and_foreign_pcr_are_typed() -> None:
    with pytest.raises(ImaTemplateUnknown):
        parse_binary(_kernel_ima_ng(b"/x", SHA).replace(b"ima-ng", b"ima-zz"))
    with pytest.raises(ImaPcrInvalid):
        parse_binary(to_binary(make_entry("/x", SHA, pcr=11)))


@pytest.mark.parametrize("raw", [
    _u32(10) + bytes(20) + _u32(0),                       # empty template name
    _u32(10) + bytes(20) + _u32(99) + b"x" * 99,           # absurd name length
    _u32(10) + bytes(20) + _u32(6) + b"ima-ng" + _u32(3) + b"abc",  # fields don't fit
    b"10 zz ima-ng sha256:00 /x\n",                       # hash is not hex
    b"10 " + b"00" * 20 + b" ima-ng sha256 /x\n",          # digest without algo
    b"10 " + b"00" * 20 + b" ima-ng md5:00 /x\n",          # wrong digest size
    b"junk\n",
])
def test_malformed_lists_are_typed(raw: bytes) -> None:
    with pytest.raises(ImaMalformed):
        parse_list(raw)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_entries_or_a_typed_error(raw: bytes) -> None:
    for parser in (parse_binary, parse_ascii, parse_list):
        with contextlib.suppress(ImaMalformed):
            parser(raw)


@FUZZ
@given(st.data())
def test_mutated_real_lists_give_entries_or_a_typed_error(data: st.DataObject) -> None:
    raw = bytearray(b"".join(to_binary(e) for e in _sample()))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        entries = parse_binary(bytes(raw[:cut]))
    except ImaMalformed:
        return
    # Whatever parsed was checked: each non-violation hash is the SHA-1 of its data.
    assert all(e.violation or hashlib.sha1(e.data).digest() == e.template_hash
               for e in entries)
