"""The IMA parsers' fast paths (issue 13 benchmark): well-formed PCR 10 ``ima-ng`` entries are
read in a tight loop (``_binary_run`` / ``_ascii_run``); everything else goes through the careful
per-entry code, which names the errors. Hypothesis: on lists built to hit every check of the
fast paths (lengths off by one, separators, algorithms, digest sizes, template hashes recomputed
so that only the structure is wrong), the parsers give exactly what the careful code alone gives:
the same entries, or the same typed error with the same check and detail."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.ima import ImaMalformed, ImaTooLarge, parse
from attest.core.ima.encode import make_entry, to_ascii, to_binary
from attest.core.ima.parse import DIGEST_SIZES, ImaEntry, parse_ascii, parse_binary

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHA = hashlib.sha256(b"bash").digest()
ALGS = [b"sha256", b"sha1", b"md5", b"sha512", b"sm3", b"sha", b"", b"s\xffa", b"sha256:",
        b"x" * 31]
Outcome = list[ImaEntry] | tuple[type, str, str]


def _u32(n: int) -> bytes:
    return struct.pack("<I", n % (1 << 32))


def _outcome(parser: Callable[[bytes], list[ImaEntry]], raw: bytes) -> Outcome:
    try:
        return parser(raw)
    except ImaMalformed as exc:
        return (type(exc), exc.check, exc.detail)


def _careful(parser: Callable[[bytes], list[ImaEntry]], raw: bytes) -> Outcome:
    """The parser with its fast path switched off: entry by entry."""
    with mock.patch.object(parse, "_binary_run", lambda raw, pos, out: pos), \
            mock.patch.object(parse, "_ascii_run", lambda lines, i, end, out: i):
        return _outcome(parser, raw)


BINARY_FAULTS = ["alg", "sep", "digest+", "digest-", "no-nul", "no-name", "flen+", "flen-",
                 "flen-huge", "nlen+", "nlen-", "trailing", "violation", "thash", "template",
                 "name_len+", "name_len-", "pcr", "size+", "size-"]


def _data(alg: bytes, digest: bytes, path: bytes, faults: set[str]) -> bytes:
    sep = b":" if "sep" in faults else b":\x00"
    field1 = alg + sep + digest
    name = path + (b"" if "no-nul" in faults or "no-name" in faults else b"\x00")
    flen = len(field1) + ("flen+" in faults) - ("flen-" in faults) + (
        1 << 31 if "flen-huge" in faults else 0)
    nlen = len(name) + ("nlen+" in faults) - ("nlen-" in faults)
    return (_u32(flen) + field1 + _u32(nlen) + name + (b"\x00" if "trailing" in faults else b""))


@st.composite
def binary_ng(draw: st.DrawFn) -> bytes:
    """A well-formed binary ima-ng entry with up to two faults, each one a check of the fast
    path; the template hash is recomputed, so (unless that is the fault) only the structure is
    wrong."""
    faults = draw(st.sets(st.sampled_from(BINARY_FAULTS), max_size=2))
    alg = draw(st.sampled_from(ALGS[5:] if "alg" in faults else ALGS[:5]))
    size = DIGEST_SIZES.get(alg.decode("ascii", "replace"), 20)
    digest = draw(st.binary(min_size=size, max_size=size))
    digest = digest + b"\x01" if "digest+" in faults else digest
    digest = digest[:-1] if "digest-" in faults else digest
    path = b"" if "no-name" in faults else draw(st.binary(min_size=1, max_size=8))
    data = _data(alg, digest, path, faults)
    thash = bytes(20) if "violation" in faults else hashlib.sha1(data).digest()
    thash = b"\x01" * 20 if "thash" in faults else thash
    name = draw(st.sampled_from([b"ima-nh", b"ima-sig", b"ima"])) if "template" in faults \
        else b"ima-ng"
    name_len = len(name) + ("name_len+" in faults) - ("name_len-" in faults)
    pcr = draw(st.sampled_from([11, 10 + (1 << 8)])) if "pcr" in faults else 10
    declared = len(data) + ("size+" in faults) - ("size-" in faults)
    return _u32(pcr) + thash + _u32(name_len) + name + _u32(declared) + data


def _others() -> list[ImaEntry]:
    return [make_entry("/usr/bin/old", hashlib.sha1(b"old").digest(), template="ima"),
            make_entry("/usr/bin/signed", SHA, template="ima-sig", extra=b"\x03\x02sig"),
            make_entry(".ima", hashlib.sha256(b"cert").digest(), template="ima-buf",
                       extra=b"cert"),
            make_entry("/var/log/x", bytes(32), violation=True),
            make_entry("/usr/bin/bash", SHA)]


@FUZZ
@given(st.lists(st.one_of(binary_ng(), st.sampled_from([to_binary(e) for e in _others()])),
                max_size=5), st.integers(0, 8))
def test_binary_fast_path_agrees_with_the_careful_parser(parts: list[bytes], cut: int) -> None:
    raw = b"".join(parts)
    raw = raw[:len(raw) - cut] if cut < 4 else raw
    assert _outcome(parse_binary, raw) == _careful(parse_binary, raw)


ASCII_FAULTS = ["alg", "sep", "sep2", "digest+", "digest-", "no-path", "empty-path",
                "space-path", "violation", "thash", "thash-len", "template", "pcr", "pcr-digit",
                "hex-upper", "hex-odd", "hex-tab", "hex-junk"]


def _hex_text(data: bytes, faults: set[str]) -> bytes:
    text = data.hex().encode()
    text = text.upper() if "hex-upper" in faults else text
    text = text[:-1] if "hex-odd" in faults else text
    text = text[:2] + b"\t" + text[2:] if "hex-tab" in faults else text
    return text[:-1] + b"g" if "hex-junk" in faults else text


@st.composite
def ascii_ng(draw: st.DrawFn) -> bytes:
    """A well-formed ASCII ima-ng line with up to two faults; the template hash matches the
    fields as written unless that is the fault."""
    faults = draw(st.sets(st.sampled_from(ASCII_FAULTS), max_size=2))
    alg = draw(st.sampled_from(ALGS[5:] if "alg" in faults else ALGS[:5]))
    size = DIGEST_SIZES.get(alg.decode("ascii", "replace"), 20)
    digest = draw(st.binary(min_size=size, max_size=size))
    digest = digest + b"\x01" if "digest+" in faults else digest
    digest = digest[:-1] if "digest-" in faults else digest
    path = draw(st.binary(min_size=1, max_size=8).map(lambda b: b.replace(b"\n", b"/")))
    path = b"" if "empty-path" in faults or "no-path" in faults else path
    path = b"/a b" if "space-path" in faults else path
    data = (_u32(len(alg) + 2 + len(digest)) + alg + b":\x00" + digest + _u32(len(path) + 1)
            + path + b"\x00")
    thash = bytes(20) if "violation" in faults else hashlib.sha1(data).digest()
    thash = b"\x01" * 20 if "thash" in faults else thash
    thash = thash + b"\x01" if "thash-len" in faults else thash
    pcr = b"11" if "pcr" in faults else b"10"
    pcr = draw(st.sampled_from([b"010", "\u0661\u0660".encode(), b"\xb2"])) \
        if "pcr-digit" in faults else pcr
    template = draw(st.sampled_from([b"ima-sig", b"ima-nh"])) if "template" in faults \
        else b"ima-ng"
    sep = b"" if "sep" in faults else b":"
    sep = b"::" if "sep2" in faults else sep
    words = [pcr, _hex_text(thash, faults), template, alg + sep + _hex_text(digest, faults)]
    return b" ".join(words + ([] if "no-path" in faults else [path])) + b"\n"


@FUZZ
@given(st.lists(st.one_of(ascii_ng(), st.sampled_from([to_ascii(e) for e in _others()])),
                max_size=5), st.booleans())
def test_ascii_fast_path_agrees_with_the_careful_parser(lines: list[bytes], cut: bool) -> None:
    raw = b"".join(lines)
    raw = raw[:-1] if cut else raw
    assert _outcome(parse_ascii, raw) == _careful(parse_ascii, raw)


def test_the_fast_paths_are_taken_for_ima_ng() -> None:
    """(So that the agreement above is not vacuous.)"""
    entries = [make_entry(f"/usr/bin/f{i}", SHA) for i in range(3)]
    with mock.patch.object(parse, "_binary_entry", side_effect=AssertionError), \
            mock.patch.object(parse, "_ascii_line", side_effect=AssertionError):
        assert parse_binary(b"".join(to_binary(e) for e in entries)) == entries
        assert parse_ascii(b"".join(to_ascii(e) for e in entries)) == entries


def test_an_oversized_ima_ng_entry_is_refused_on_the_fast_path_too() -> None:
    entry = make_entry("/" + "x" * (1 << 20), SHA)
    with pytest.raises(ImaTooLarge) as err:
        parse_binary(to_binary(entry))
    assert err.value.check == "ima.too_large"


@pytest.mark.parametrize("line", [
    b"10 " + b"00" * 20 + b" ima-ng \xff:00 /x\n",           # non-ASCII algorithm
    "\u00b2 ".encode() + b"00" * 20 + b" ima-ng sha1:00 /x\n",  # a digit int() refuses
    "\u0661\u0660 ".encode() + b"00" * 20 + b" ima-ng sha1:00 /x\n",
])
def test_non_ascii_fields_are_typed_errors_not_crashes(line: bytes) -> None:
    with pytest.raises(ImaMalformed) as err:
        parse_ascii(line)
    assert err.value.check == "ima.parse"


def test_a_final_entry_declaring_more_data_than_follows_is_truncated() -> None:
    """Well-formed ima-ng data, but its declared length runs past the end of the list."""
    data = to_binary(make_entry("/usr/bin/bash", SHA))
    size = struct.unpack_from("<I", data, 34)[0]
    raw = data[:34] + _u32(size + 1) + data[38:]
    with pytest.raises(parse.ImaTruncated) as err:
        parse_binary(raw)
    assert err.value.check == "ima.truncated"


@FUZZ
@given(st.lists(st.sampled_from([to_ascii(e) for e in _others()]), max_size=6),
       st.binary(max_size=30))
def test_ascii_entry_offsets_are_after_every_newline(lines: list[bytes], tail: bytes) -> None:
    """The agent's framing of an ASCII list (a partial last line, possibly with newlines of
    its own, is cut where its last newline is)."""
    raw = b"".join(lines) + tail
    offsets = parse.entry_offsets(raw)
    if raw[:1].isdigit():
        assert offsets == [0] + [i + 1 for i in range(len(raw)) if raw[i] == 0x0A]
    for k in range(len(lines) + 1 if lines else 0):
        assert len(parse_ascii(raw[:offsets[k]])) == k
