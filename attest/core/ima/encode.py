"""Write IMA entries exactly as the kernel does (binary list lines and ASCII lines).

Used by the tests and benchmarks to build lists and extend PCR 10 the way the kernel would, and
by nothing on the verifier's path.
"""

from __future__ import annotations

import hashlib
import struct

from attest.core.ima.parse import NAME_LEN_MAX, ImaEntry

_U32 = struct.Struct("<I")


def _field(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def make_entry(path: str, digest: bytes, *, template: str = "ima-ng", alg: str = "sha256",
               extra: bytes = b"", violation: bool = False, pcr: int = 10) -> ImaEntry:
    """The entry the kernel would record (``violation``: zero template hash)."""
    name = path.encode("utf-8", "surrogateescape")
    if template == "ima":
        data = digest + name.ljust(NAME_LEN_MAX + 1, b"\x00")
        alg = "sha1"
    else:
        fields = [alg.encode() + b":\x00" + digest, name + b"\x00"]
        if template in ("ima-sig", "ima-buf"):
            fields.append(extra)
        data = b"".join(_field(f) for f in fields)
    thash = bytes(20) if violation else hashlib.sha1(data).digest()
    return ImaEntry(pcr, thash, template, data, alg, digest, path, extra)


def to_binary(entry: ImaEntry) -> bytes:
    """``binary_runtime_measurements`` bytes of one entry."""
    head = _U32.pack(entry.pcr) + entry.template_hash + _field(entry.template.encode())
    if entry.template == "ima":
        name = entry.path.encode("utf-8", "surrogateescape")
        return head + entry.digest + _field(name)
    return head + _field(entry.data)


def to_ascii(entry: ImaEntry) -> bytes:
    """``ascii_runtime_measurements`` line of one entry."""
    digest = (entry.digest.hex() if entry.template == "ima"
              else f"{entry.digest_alg}:{entry.digest.hex()}")
    line = f"{entry.pcr} {entry.template_hash.hex()} {entry.template} {digest} {entry.path}"
    if entry.template in ("ima-sig", "ima-buf"):
        line += f" {entry.extra.hex()}"
    return line.encode("utf-8", "surrogateescape") + b"\n"
