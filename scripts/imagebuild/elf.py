"""Read the machine of an ELF file from its header (e_ident + e_type + e_machine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scripts.imagebuild.errors import ElfInvalid

ELF_MAGIC = b"\x7fELF"
HEADER_BYTES = 20  # e_ident (16) + e_type (2) + e_machine (2)

EM_386 = 3
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183

# Debian architecture name -> (ELF class, e_machine)
ARCH_MACHINE: dict[str, tuple[int, int]] = {
    "amd64": (64, EM_X86_64),
    "arm64": (64, EM_AARCH64),
    "armhf": (32, EM_ARM),
}
MACHINE_NAMES = {EM_386: "i386", EM_ARM: "arm", EM_X86_64: "x86_64", EM_AARCH64: "aarch64"}


@dataclass(frozen=True)
class ElfHeader:
    bits: int  # 32 or 64
    little_endian: bool
    machine: int

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"EM_{self.machine}")


def read_elf_header(head: bytes) -> ElfHeader | None:
    """The header of an ELF file from its first bytes; None when it is not ELF at all.

    A file that starts with the ELF magic but whose class, byte order or length is wrong raises
    :class:`ElfInvalid` (it is neither trusted as some machine nor ignored)."""
    if not head.startswith(ELF_MAGIC):
        return None
    if len(head) < HEADER_BYTES:
        raise ElfInvalid(f"ELF header truncated at {len(head)} bytes (needs {HEADER_BYTES})")
    ei_class, ei_data = head[4], head[5]
    if ei_class not in (1, 2):
        raise ElfInvalid(f"EI_CLASS {ei_class} is neither 1 (32-bit) nor 2 (64-bit)")
    if ei_data not in (1, 2):
        raise ElfInvalid(f"EI_DATA {ei_data} is neither 1 (LSB) nor 2 (MSB)")
    machine = int.from_bytes(head[18:20], "little" if ei_data == 1 else "big")
    return ElfHeader(bits=32 * ei_class, little_endian=ei_data == 1, machine=machine)


def matches_arch(header: ElfHeader, arch: str) -> bool:
    """Whether an ELF header is code for a Debian architecture (little-endian on all three)."""
    bits, machine = ARCH_MACHINE[arch]
    return header.bits == bits and header.machine == machine and header.little_endian


PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5


def _u(data: bytes, offset: int, size: int, order: Literal["little", "big"]) -> int:
    if offset < 0 or offset + size > len(data):
        raise ElfInvalid(f"ELF structure at {offset} runs past the file ({len(data)} bytes)")
    return int.from_bytes(data[offset:offset + size], order)


Segments = tuple[list[tuple[int, int, int]], tuple[int, int] | None]


def _segments(data: bytes, order: Literal["little", "big"]) -> Segments:
    """PT_LOAD segments as (vaddr, offset, filesz) and PT_DYNAMIC as (offset, filesz)."""
    phoff, phentsize, phnum = _u(data, 0x20, 8, order), _u(data, 0x36, 2, order), \
        _u(data, 0x38, 2, order)
    loads, dynamic = [], None
    for i in range(phnum):
        base = phoff + i * phentsize
        kind = _u(data, base, 4, order)
        offset, vaddr, filesz = (_u(data, base + 8, 8, order), _u(data, base + 16, 8, order),
                                 _u(data, base + 32, 8, order))
        if kind == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == PT_DYNAMIC:
            dynamic = (offset, filesz)
    return loads, dynamic


def _dynamic(data: bytes, where: tuple[int, int], order: Literal["little", "big"]
             ) -> list[tuple[int, int]]:
    entries = []
    for pos in range(where[0], where[0] + where[1] - 15, 16):
        tag, value = _u(data, pos, 8, order), _u(data, pos + 8, 8, order)
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _string(data: bytes, start: int) -> str:
    end = data.find(b"\0", start)
    if start >= len(data) or end < 0:
        raise ElfInvalid(f"DT_NEEDED name at {start} runs past the file")
    return data[start:end].decode("ascii", "replace")


def needed_libraries(data: bytes) -> list[str]:
    """The DT_NEEDED sonames of a 64-bit ELF file (empty for a static or 32-bit one).

    Program headers give PT_DYNAMIC and the PT_LOAD segments that map DT_STRTAB's address to a
    file offset; anything out of bounds raises :class:`ElfInvalid`."""
    header = read_elf_header(data)
    if header is None or header.bits != 64:
        return []
    order: Literal["little", "big"] = "little" if header.little_endian else "big"
    loads, dynamic = _segments(data, order)
    entries = [] if dynamic is None else _dynamic(data, dynamic, order)
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab is None:
        return []
    base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), None)
    if base is None:
        raise ElfInvalid(f"DT_STRTAB address {strtab:#x} is in no loaded segment")
    return [_string(data, base + value) for tag, value in entries if tag == DT_NEEDED]
