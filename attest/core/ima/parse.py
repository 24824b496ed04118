"""Parse IMA measurement lists: the binary list and the ASCII one (pure, bytes in).

Binary entry, as ``ima_measurements_show`` writes it (little-endian on every platform µMEC
runs on)::

    u32 pcr | 20-byte SHA-1 template hash | u32 name length | template name
    | u32 template-data length (absent for the ``ima`` template) | template data

Template data is a sequence of fields, each ``u32 length | data``, except for ``ima`` whose
data is a bare 20-byte digest followed by a length-prefixed name without its NUL.

The template hash the kernel extends is the hash of the template data *as the kernel hashes
it* (``ima_calc_field_array_hash``): for every template but ``ima`` that is exactly the field
sequence above; for ``ima`` it is the digest followed by the name NUL-padded to 256 bytes. Every
entry's listed SHA-1 template hash is checked against that, except for violations (an all-zero
template hash, which the kernel extends as all-ones).
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from typing import NamedTuple

from attest.core.ima.errors import (
    ImaMalformed,
    ImaPcrInvalid,
    ImaTemplateHashMismatch,
    ImaTemplateUnknown,
    ImaTooLarge,
    ImaTruncated,
)

IMA_PCR = 10
ZERO_SHA1 = bytes(20)
NAME_LEN_MAX = 255            # IMA_EVENT_NAME_LEN_MAX: the ``ima`` template pads names to 256
MAX_ENTRY_DATA = 1 << 20      # one entry's template data (ima-buf may carry a certificate)
MAX_LIST_BYTES = 64 << 20
DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48,
                "sha512": 64, "sm3": 32, "sm3-256": 32, "rmd160": 20, "wp512": 64,
                "streebog256": 32, "streebog512": 64}
# Number of length-prefixed fields per template (``ima`` is handled apart).
TEMPLATE_FIELDS = {"ima-ng": 2, "ima-sig": 3, "ima-buf": 3}
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<I20sI")
# The common case, read in one go: an ``ima-ng`` entry's head up to its data length.
_NG_HEAD = struct.Struct("<I20sI6sI")
# Digest algorithm name (bytes, as listed) -> (name, digest size, the ``d-ng`` field's length
# prefix and ``<algo>:\0``), for the fast paths.
_ALGS = {alg.encode(): (alg, size, _U32.pack(len(alg) + 2 + size) + alg.encode() + b":\x00")
         for alg, size in DIGEST_SIZES.items()}


class ImaEntry(NamedTuple):
    """One measurement. ``data`` is what the kernel hashes into the template hash. (A named
    tuple: lists have tens of thousands of entries, and tuples are the cheapest to build.)"""

    pcr: int
    template_hash: bytes
    template: str
    data: bytes
    digest_alg: str
    digest: bytes
    path: str
    extra: bytes = b""        # ima-sig: the signature; ima-buf: the buffer

    @property
    def violation(self) -> bool:
        return self.template_hash == ZERO_SHA1


def _decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _digest_ng(field: bytes) -> tuple[str, bytes]:
    """``d-ng``: ``<algo>:\\0<digest>``."""
    sep = field.find(b":\x00", 0, 32)
    if sep <= 0:
        raise ImaMalformed(f"digest field {field[:24].hex()} has no '<algo>:' prefix")
    alg = field[:sep].decode("ascii", "replace")
    digest = field[sep + 2:]
    if DIGEST_SIZES.get(alg) != len(digest):
        raise ImaMalformed(f"digest field: {len(digest)} bytes is not a {alg!r} digest")
    return alg, digest


def _fields(data: bytes, count: int) -> list[bytes]:
    fields: list[bytes] = []
    pos, end = 0, len(data)
    for _ in range(count):
        if pos + 4 > end:
            raise ImaMalformed(f"template data ends before field {len(fields) + 1} of {count}")
        (size,) = _U32.unpack_from(data, pos)
        pos += 4
        if size > end - pos:
            raise ImaMalformed(f"field {len(fields) + 1} declares {size} bytes, "
                               f"{end - pos} remain")
        fields.append(data[pos:pos + size])
        pos += size
    if pos != end:
        raise ImaMalformed(f"{end - pos} bytes after the template's {count} fields")
    return fields


def _name_ng(field: bytes) -> str:
    if not field.endswith(b"\x00"):
        raise ImaMalformed("name field is not NUL-terminated")
    return _decode_path(field[:-1])


def entry_from_fields(pcr: int, template_hash: bytes, template: str, data: bytes) -> ImaEntry:
    """An ``ima-ng``/``ima-sig``/``ima-buf`` entry from its template data."""
    count = TEMPLATE_FIELDS.get(template)
    if count is None:
        raise ImaTemplateUnknown(f"template {template!r} (supported: ima, "
                                 f"{', '.join(TEMPLATE_FIELDS)})")
    fields = _fields(data, count)
    alg, digest = _digest_ng(fields[0])
    return ImaEntry(pcr, template_hash, template, data, alg, digest, _name_ng(fields[1]),
                    fields[2] if count == 3 else b"")


def entry_ima(pcr: int, template_hash: bytes, digest: bytes, name: bytes) -> ImaEntry:
    """An ``ima`` entry: SHA-1 digest and a name of at most 255 bytes."""
    if len(name) > NAME_LEN_MAX:
        raise ImaMalformed(f"ima template name of {len(name)} bytes (at most {NAME_LEN_MAX})")
    data = digest + name.ljust(NAME_LEN_MAX + 1, b"\x00")
    return ImaEntry(pcr, template_hash, "ima", data, "sha1", digest, _decode_path(name))


def check_entry(entry: ImaEntry, index: int) -> ImaEntry:
    """PCR 10 only; the listed template hash is SHA-1 of the data (violations: all zero)."""
    if entry.pcr != IMA_PCR:
        raise ImaPcrInvalid(f"entry #{index} ({entry.path!r}) is in PCR {entry.pcr}")
    if not entry.violation and hashlib.sha1(entry.data).digest() != entry.template_hash:
        raise ImaTemplateHashMismatch(
            f"entry #{index} ({entry.path!r}): listed template hash "
            f"{entry.template_hash.hex()} != sha1 of its data "
            f"{hashlib.sha1(entry.data).digest().hex()}")
    return entry


def _take(raw: bytes, pos: int, size: int, index: int) -> int:
    """End offset of ``size`` bytes at ``pos``, or the truncation error."""
    if size > len(raw) - pos:
        raise ImaTruncated(f"entry #{index} at offset {pos} needs {size} bytes, "
                           f"{len(raw) - pos} remain")
    return pos + size


def _binary_ima(raw: bytes, pos: int, pcr: int, thash: bytes,
                index: int) -> tuple[ImaEntry, int]:
    end = _take(raw, pos, 24, index)
    digest = raw[pos:pos + 20]
    (name_len,) = _U32.unpack_from(raw, pos + 20)
    if name_len > NAME_LEN_MAX:
        raise ImaMalformed(f"entry #{index}: ima name of {name_len} bytes")
    start, end = end, _take(raw, end, name_len, index)
    return entry_ima(pcr, thash, digest, raw[start:end]), end


def _binary_entry(raw: bytes, pos: int, index: int) -> tuple[ImaEntry, int]:
    end = _take(raw, pos, _HEAD.size, index)
    pcr, thash, name_len = _HEAD.unpack_from(raw, pos)
    if name_len == 0 or name_len > 16:
        raise ImaMalformed(f"entry #{index} at offset {pos}: template name of {name_len} bytes")
    pos, end = end, _take(raw, end, name_len, index)
    template = raw[pos:end].decode("ascii", "replace")
    if template == "ima":  # no data length: a 20-byte digest, then a u32-prefixed name
        return _binary_ima(raw, end, pcr, thash, index)
    pos, end = end, _take(raw, end, 4, index)
    (size,) = _U32.unpack_from(raw, pos)
    if size > MAX_ENTRY_DATA:
        raise ImaTooLarge(f"entry #{index}: template data of {size} bytes")
    pos, end = end, _take(raw, end, size, index)
    return entry_from_fields(pcr, thash, template, raw[pos:end]), end


def _new_entry(fields: tuple[int, bytes, str, bytes, str, bytes, str, bytes]) -> ImaEntry:
    return tuple.__new__(ImaEntry, fields)  # ImaEntry(*fields), without its Python __new__


def _ng_fields(data: bytes) -> tuple[str, bytes, str] | None:
    """Algorithm, digest and path of well-formed ``ima-ng`` template data, as
    :func:`entry_from_fields` reads them; ``None`` for anything else (that path then names the
    error)."""
    size = len(data)
    if size < 8:
        return None
    (flen,) = _U32.unpack_from(data, 0)
    # Two length-prefixed fields fill the data; the name (at least its NUL) ends it.
    if flen > size - 9 or data[-1] != 0 or _U32.unpack_from(data, 4 + flen)[0] != size - 8 - flen:
        return None
    # _digest_ng looks within the field's first 32 bytes; a separator found past the field's
    # end gives a negative digest size below, which no algorithm has.
    sep = data.find(b":\x00", 4, 36)
    info = _ALGS.get(data[4:sep]) if sep > 4 else None
    if info is None or info[1] != flen - (sep - 2):
        return None
    return info[0], data[sep + 2:4 + flen], _decode_path(data[8 + flen:-1])


def _binary_run(raw: bytes, pos: int, out: list[ImaEntry]) -> int:
    """Append the well-formed PCR 10 ``ima-ng`` entries from ``pos`` (the kernel's default
    template: nearly every entry of a real list) and return where the first other one starts.
    Every check of :func:`_binary_entry` and :func:`check_entry` holds for what is appended;
    anything else, error or not, is left to them."""
    end, head, sha1, append = len(raw), _NG_HEAD.unpack_from, hashlib.sha1, out.append
    while end - pos >= _NG_HEAD.size:
        pcr, thash, name_len, name, size = head(raw, pos)
        stop = pos + _NG_HEAD.size + size
        if pcr != IMA_PCR or name_len != 6 or name != b"ima-ng" or stop > end \
                or size > MAX_ENTRY_DATA:
            break
        data = raw[stop - size:stop]
        fields = _ng_fields(data)
        if fields is None or (thash != ZERO_SHA1 and sha1(data).digest() != thash):
            break
        append(_new_entry((IMA_PCR, thash, "ima-ng", data, *fields, b"")))
        pos = stop
    return pos


def parse_binary(raw: bytes, *, first_index: int = 0) -> list[ImaEntry]:
    """Every entry of a binary list, checked (:func:`check_entry`); typed errors only."""
    if len(raw) > MAX_LIST_BYTES:
        raise ImaTooLarge(f"IMA list of {len(raw)} bytes (limit {MAX_LIST_BYTES})")
    entries: list[ImaEntry] = []
    pos = 0
    while pos < len(raw):
        pos = _binary_run(raw, pos, entries)
        if pos < len(raw):  # another template, or an error: entry by entry
            index = first_index + len(entries)
            entry, pos = _binary_entry(raw, pos, index)
            entries.append(check_entry(entry, index))
    return entries


def _hex(where: str, text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ImaMalformed(f"{where}: {text[:80]!r} is not hex") from None


def _ascii_ng(pcr: int, thash: bytes, template: str, rest: str, index: int) -> ImaEntry:
    alg_digest, _, tail = rest.partition(" ")
    alg, sep, digest_hex = alg_digest.partition(":")
    if not sep:
        raise ImaMalformed(f"line {index}: digest {alg_digest[:80]!r} has no '<algo>:' prefix")
    digest = _hex(f"line {index} digest", digest_hex)
    extra = b""
    if TEMPLATE_FIELDS[template] == 3:  # the last field (signature / buffer) is hex
        tail, _, extra_hex = tail.rpartition(" ")
        extra = _hex(f"line {index} {template} field", extra_hex)
    fields = (alg.encode("utf-8", "surrogateescape") + b":\x00" + digest,
              tail.encode("utf-8", "surrogateescape") + b"\x00", extra)[:TEMPLATE_FIELDS[template]]
    data = b"".join(_U32.pack(len(f)) + f for f in fields)
    return entry_from_fields(pcr, thash, template, data)


def _ascii_line(line: str, index: int) -> ImaEntry:
    parts = line.split(" ", 3)
    if len(parts) != 4:
        raise ImaMalformed(f"line {index}: {line[:80]!r} is not '<pcr> <hash> <template> …'")
    pcr_text, hash_text, template, rest = parts
    if not (pcr_text.isascii() and pcr_text.isdigit()) or len(pcr_text) > 2:
        raise ImaMalformed(f"line {index}: PCR {pcr_text[:16]!r}")
    thash = _hex(f"line {index} template hash", hash_text)
    if len(thash) != 20:
        raise ImaMalformed(f"line {index}: template hash is not 20 bytes")
    if template == "ima":
        digest_hex, _, name = rest.partition(" ")
        digest = _hex(f"line {index} digest", digest_hex)
        if len(digest) != 20:
            raise ImaMalformed(f"line {index}: ima digest is not 20 bytes")
        return entry_ima(int(pcr_text), thash, digest, name.encode("utf-8", "surrogateescape"))
    if template not in TEMPLATE_FIELDS:
        raise ImaTemplateUnknown(f"line {index}: template {template[:32]!r}")
    return _ascii_ng(int(pcr_text), thash, template, rest, index)


def _ascii_run(lines: list[bytes], i: int, end: int, out: list[ImaEntry]) -> int:
    """Append the entries of well-formed PCR 10 ``ima-ng`` lines from ``lines[i]`` and return
    the index of the first other line (see :func:`_binary_run`; :func:`_ascii_line` reads the
    others, and names the errors). The template data is rebuilt as the kernel hashed it."""
    sha1, append, unhex, u32 = hashlib.sha1, out.append, binascii.unhexlify, _U32.pack
    while i < end:
        parts = lines[i].split(b" ", 4)
        if len(parts) != 5 or parts[0] != b"10" or parts[2] != b"ima-ng":
            break
        alg, sep, digest_hex = parts[3].partition(b":")
        info = _ALGS.get(alg)
        try:  # strict hex: no whitespace (bytes.fromhex, in _ascii_line, skips it)
            thash, digest = unhex(parts[1]), unhex(digest_hex)
        except ValueError:
            break
        if info is None or not sep or len(digest) != info[1]:
            break
        path = parts[4]
        data = b"".join((info[2], digest, u32(len(path) + 1), path, b"\x00"))
        if thash != ZERO_SHA1 and sha1(data).digest() != thash:  # (so thash has 20 bytes)
            break
        append(_new_entry((IMA_PCR, thash, "ima-ng", data, info[0], digest, _decode_path(path),
                           b"")))
        i += 1
    return i


def parse_ascii(raw: bytes, *, first_index: int = 0) -> list[ImaEntry]:
    """Every entry of ``ascii_runtime_measurements``; a last line without newline is truncated
    (the agent read the file while the kernel was writing it)."""
    if len(raw) > MAX_LIST_BYTES:
        raise ImaTooLarge(f"IMA list of {len(raw)} bytes (limit {MAX_LIST_BYTES})")
    lines = raw.split(b"\n")  # lines split at an ASCII byte decode as the whole list would
    if lines[-1]:
        raise ImaTruncated(f"the last line ({_decode_path(lines[-1])[:80]!r}) has no newline")
    entries: list[ImaEntry] = []
    i, end = 0, len(lines) - 1
    while i < end:
        i = _ascii_run(lines, i, end, entries)
        if i < end:  # another template, or an error: this line alone
            index = first_index + i
            entries.append(check_entry(_ascii_line(_decode_path(lines[i]), index), index))
            i += 1
    return entries


def parse_list(raw: bytes, *, first_index: int = 0) -> list[ImaEntry]:
    """Binary or ASCII, told apart by the first byte (a binary list starts with PCR 10 as a
    little-endian u32, i.e. ``0x0a``; an ASCII one with a digit)."""
    if raw[:1].isdigit():
        return parse_ascii(raw, first_index=first_index)
    return parse_binary(raw, first_index=first_index)


def entry_offsets(raw: bytes) -> list[int]:
    """Where each complete entry of a list starts, plus where the last complete one ends (for
    the agent, which sends the entries after an offset; nothing is checked here, the verifier
    does that). ASCII lists are framed by newlines; a trailing partial entry is left out."""
    if raw[:1].isdigit():  # every newline, found by bytes.find (a list has ~100 bytes a line)
        offsets, end = [0], raw.find(b"\n")
        while end >= 0:
            offsets.append(end + 1)
            end = raw.find(b"\n", end + 1)
        return offsets
    offsets, pos = [0], 0
    while pos + _HEAD.size <= len(raw):
        name_len = _HEAD.unpack_from(raw, pos)[2]
        head = pos + _HEAD.size + name_len
        if raw[pos + _HEAD.size:head] == b"ima":
            size = 20 + 4 + (_U32.unpack_from(raw, head + 20)[0] if head + 24 <= len(raw)
                             else len(raw))
        else:
            size = 4 + (_U32.unpack_from(raw, head)[0] if head + 4 <= len(raw) else len(raw))
        if head + size > len(raw):
            break
        pos = head + size
        offsets.append(pos)
    return offsets
