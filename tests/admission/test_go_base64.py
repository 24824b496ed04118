"""The signature annotation's base64 is read as cosign reads it: Go's
``base64.StdEncoding.DecodeString`` (:func:`admission.core.cosign.go_b64decode`).

Go's decoder (``encoding/base64``, ``decodeQuantum``) skips ``\\r`` and ``\\n`` anywhere, also
between and after the ``=`` padding; requires the padding (StdEncoding pads); refuses every other
byte outside the alphabet (a space, a tab) and anything after the padding; and, not being
``Strict()``, does not check the unused bits of the last quantum. :func:`go_reference` below is
that algorithm transliterated, and hypothesis compares the two on strings made of the characters
that matter.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core.cosign import (
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    SignatureMalformed,
    go_b64decode,
)

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}


def _quantum(src: str, si: int) -> tuple[int, list[int] | None, bool]:
    """One ``decodeQuantum``: (next index, the 6-bit values read, input finished)."""
    buf: list[int] = []
    while len(buf) < 4:
        if si == len(src):
            if not buf:
                return si, [], True
            raise ValueError("incomplete quantum")   # j == 1, or padding required
        ch = src[si]
        si += 1
        if ch in _DECODE:
            buf.append(_DECODE[ch])
            continue
        if ch in "\r\n":
            continue
        if ch != "=" or len(buf) < 2:
            raise ValueError("illegal character or misplaced padding")
        if len(buf) == 2:                                # "==" expected: skip newlines, then "="
            while si < len(src) and src[si] in "\r\n":
                si += 1
            if si == len(src) or src[si] != "=":
                raise ValueError("incorrect padding")
            si += 1
        while si < len(src) and src[si] in "\r\n":
            si += 1
        if si < len(src):
            raise ValueError("trailing garbage")
        return si, buf, True
    return si, buf, False


def go_reference(src: str) -> bytes:
    """Go's StdEncoding.DecodeString, transliterated (ValueError for CorruptInputError)."""
    out, si = bytearray(), 0
    while si < len(src):
        si, values, finished = _quantum(src, si)
        if values:
            val = 0
            for v in values + [0] * (4 - len(values)):
                val = val << 6 | v
            out += val.to_bytes(3, "big")[:len(values) - 1]
        if finished:
            break
    return bytes(out)


@pytest.mark.parametrize(("text", "expected"), [
    ("QUJD", b"ABC"), ("QQ==", b"A"), ("QUI=", b"AB"), ("", b""), ("\n", b""),
    ("Q\nQ=\r\n=\n", b"A"),          # newlines inside the data and the padding
    ("QR==", b"A"),                  # unused bits not checked (StdEncoding is not Strict)
    ("QUJD\r\nREVG\n", b"ABCDEF"),   # wrapped at any width, CRLF or LF
])
def test_accepted_as_go_accepts(text: str, expected: bytes) -> None:
    assert go_b64decode(text) == expected == go_reference(text)


@pytest.mark.parametrize("text", [
    "QQ", "QQ=", "Q===", "QQQ==", "QQ==QQ==", "QQ==\nQ", "Q Q==", "QUJD ", " QUJD",
    "QU\tJD", "QUJD\v", "QUJD\f", "QUJD\x00", "QUJ-", "QUJ_", "QUJD\u00a0", "=QUJ",
])
def test_refused_as_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        go_reference(text)
    with pytest.raises(ValueError):
        go_b64decode(text)


def test_layer_signature_with_line_breaks_is_read_and_other_whitespace_is_malformed() -> None:
    sig = bytes(range(71))
    text = base64.b64encode(sig).decode()
    wrapped = "\n".join(text[i:i + 20] for i in range(0, len(text), 20)) + "\r\n"
    assert SignatureLayer(b"{}", {SIGNATURE_ANNOTATION: wrapped}).signature == sig
    with pytest.raises(SignatureMalformed, match="not base64"):
        _ = SignatureLayer(b"{}", {SIGNATURE_ANNOTATION: text.replace("A", " A", 1)}).signature


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="QUJDRVBAab+/=\r\n \t", max_size=24))
def test_same_verdict_and_bytes_as_go_on_tricky_strings(text: str) -> None:
    try:
        expected = go_reference(text)
    except ValueError:
        with pytest.raises(ValueError):
            go_b64decode(text)
        return
    assert go_b64decode(text) == expected


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=100), breaks=st.lists(st.tuples(st.integers(0, 200),
                                                               st.sampled_from(["\n", "\r"])),
                                                     max_size=10))
def test_line_breaks_anywhere_decode_to_the_same_bytes(data: bytes,
                                                       breaks: list[tuple[int, str]]) -> None:
    text = base64.b64encode(data).decode()
    for position, brk in breaks:
        cut = position % (len(text) + 1)
        text = text[:cut] + brk + text[cut:]
    assert go_b64decode(text) == data == go_reference(text)
