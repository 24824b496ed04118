"""Read the machine of an ELF file from its header (e_ident + e_type + e_machine)."""

from __future__ import annotations

from dataclasses import dataclass

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
