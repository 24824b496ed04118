"""``umec sbom``: an SBOM of what is actually installed in an image, for ``umec attest``.

Sources, read from a root filesystem or straight from the layers of an OCI image layout:

- Debian packages: ``var/lib/dpkg/status`` (and ``var/lib/dpkg/status.d/*`` of distroless
  images), paragraphs whose ``Status`` says ``installed``: name, version, architecture, source.
- Python distributions: every ``*.dist-info/METADATA`` (``Name``, ``Version``): wheels pip
  installed, in any site-packages or venv.
- The distribution: ``etc/os-release`` (``ID``, ``VERSION_ID``) for the Debian purls.

An OCI image layout (``oci-layout`` + ``index.json``, e.g. what umoci or ``skopeo copy oci:``
write) is read layer by layer (tar, tar+gzip), whiteouts and opaque directories applied, so no
unpacking (and no root) is needed. Output: SPDX 2.3 JSON or CycloneDX 1.5 JSON, with package
URLs (``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12``, ``pkg:pypi/NAME@VERSION``).
The document is a function of its inputs: packages sorted, the namespace / serial number derived
from their list, and the creation time given by the caller (``SOURCE_DATE_EPOCH`` in CI), so a
reproducible image gets a reproducible SBOM.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from admission.core.errors import AdmissionError

DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_DIR = "var/lib/dpkg/status.d/"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
MAX_METADATA_BYTES = 1 << 20
MAX_STATUS_BYTES = 64 << 20
MAX_FILES_WALKED = 2_000_000
TOOL = "umec-sbom"
LAYER_MEDIA_TYPES = ("application/vnd.oci.image.layer.v1.tar",
                     "application/vnd.oci.image.layer.v1.tar+gzip",
                     "application/vnd.docker.image.rootfs.diff.tar.gzip")


class SbomSourceInvalid(AdmissionError):
    check = "sbom.source"
    hint = ("Pass a root filesystem directory (an unpacked image) or an OCI image layout "
            "directory (oci-layout, index.json), with --platform when it holds several images.")


@dataclass(frozen=True, order=True)
class Package:
    ecosystem: str          # "deb" | "pypi"
    name: str
    version: str
    arch: str = ""
    source: str = ""

    def purl(self, distro: str) -> str:
        version = quote(self.version, safe="")
        if self.ecosystem == "pypi":
            return f"pkg:pypi/{re.sub(r'[-_.]+', '-', self.name).lower()}@{version}"
        qualifiers = [f"arch={quote(self.arch, safe='')}"] if self.arch else []
        if self.source and self.source != self.name:
            qualifiers.append(f"upstream={quote(self.source, safe='')}")
        if distro:
            qualifiers.append(f"distro={quote(distro, safe='')}")
        return f"pkg:deb/debian/{quote(self.name, safe='')}@{version}" + (
            "?" + "&".join(qualifiers) if qualifiers else "")


# --- parsers (bytes in) -------------------------------------------------------------------

def parse_dpkg_status(text: str) -> list[Package]:
    """Installed packages of a dpkg status file (continuation lines are skipped)."""
    packages = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        status = fields.get("status", "").split()
        if not fields.get("package") or not fields.get("version") or \
                status[-1:] != ["installed"]:
            continue
        source = fields.get("source", "").split(" ")[0]
        packages.append(Package("deb", fields["package"], fields["version"],
                                fields.get("architecture", ""), source))
    return packages


def parse_dist_info_metadata(text: str) -> Package | None:
    """A wheel's ``METADATA`` (core metadata headers); None without Name or Version."""
    headers = HeaderParser().parsestr(text.split("\n\n", 1)[0] + "\n")
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return None
    return Package("pypi", str(name).strip(), str(version).strip())


def parse_os_release(text: str) -> str:
    """``ID-VERSION_ID`` (``debian-12``), or ``ID`` alone, or empty."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    ident, version = values.get("ID", ""), values.get("VERSION_ID", "")
    return f"{ident}-{version}" if ident and version else ident


def _wanted(path: str) -> bool:
    return (path == DPKG_STATUS or path.startswith(DPKG_STATUS_DIR) or path in OS_RELEASE
            or (path.endswith("/METADATA") and path.rsplit("/", 2)[-2].endswith(".dist-info")))


@dataclass(frozen=True)
class Inventory:
    packages: tuple[Package, ...]
    distro: str


def inventory(files: Mapping[str, bytes]) -> Inventory:
    """Packages from the wanted files (path relative to the root, POSIX) -> their bytes."""
    packages: set[Package] = set()
    distro = ""
    for path in sorted(files):
        text = files[path].decode("utf-8", "replace")
        if path == DPKG_STATUS or path.startswith(DPKG_STATUS_DIR):
            packages.update(parse_dpkg_status(text))
        elif path in OS_RELEASE:
            distro = distro or parse_os_release(text)
        else:
            package = parse_dist_info_metadata(text)
            if package is not None:
                packages.add(package)
    return Inventory(tuple(sorted(packages)), distro)


# --- sources (I/O) ------------------------------------------------------------------------

def _read_capped(path: Path) -> bytes:
    cap = MAX_STATUS_BYTES if "dpkg" in path.parts else MAX_METADATA_BYTES
    with path.open("rb") as f:
        return f.read(cap)


def rootfs_files(root: Path) -> dict[str, bytes]:
    """The wanted files of an unpacked root filesystem (symlinks are not followed)."""
    found: dict[str, bytes] = {}
    walked = 0
    for directory, dirs, names in os.walk(root):
        rel_dir = Path(directory).relative_to(root)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        walked += len(names)
        if walked > MAX_FILES_WALKED:
            raise SbomSourceInvalid(f"{root}: more than {MAX_FILES_WALKED} files")
        for name in names:
            rel = (rel_dir / name).as_posix()
            full = Path(directory) / name
            if _wanted(rel) and full.is_file() and not full.is_symlink():
                found[rel] = _read_capped(full)
    return found


def _json_file(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SbomSourceInvalid(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise SbomSourceInvalid(f"{path}: not a JSON object")
    return doc


def _blob(layout: Path, digest: object) -> Path:
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SbomSourceInvalid(f"{layout}: bad digest {str(digest)[:80]!r}")
    return layout / "blobs" / "sha256" / digest[7:]


def _platform_of(descriptor: Mapping[str, Any]) -> str:
    p = descriptor.get("platform") or {}
    parts = [p.get("os", ""), p.get("architecture", ""), p.get("variant", "")]
    return "/".join(x for x in parts if x)


def _pick_manifest(layout: Path, index: Mapping[str, Any], platform: str | None) -> dict[str, Any]:
    """The image manifest of the layout's index for ``platform`` (nested indexes followed)."""
    for _ in range(4):
        entries = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
        if platform is not None and any(_platform_of(d) for d in entries):
            entries = [d for d in entries if _platform_of(d) == platform]
        if len(entries) != 1:
            found = sorted(_platform_of(d) or "?" for d in index.get("manifests") or [])
            raise SbomSourceInvalid(f"{layout}: {len(entries)} manifests match platform "
                                    f"{platform or '(any)'}; the layout has {found}")
        doc = _json_file(_blob(layout, entries[0].get("digest")))
        if "layers" in doc:
            return doc
        index = doc
    raise SbomSourceInvalid(f"{layout}: indexes nested too deep")


def _apply_layer(files: dict[str, bytes], tar: tarfile.TarFile) -> None:
    """One layer over ``files``: whiteouts delete, opaque directories hide what was below."""
    for member in tar:
        path = PurePosixPath(member.name.lstrip("./") or ".")
        text, name = str(path), path.name
        if name == ".wh..wh..opq":
            prefix = str(path.parent) + "/"
            for old in [p for p in files if p.startswith(prefix)]:
                del files[old]
        elif name.startswith(".wh."):
            gone = str(path.parent / name[4:])
            for old in [p for p in files if p == gone or p.startswith(gone + "/")]:
                del files[old]
        elif member.isfile() and _wanted(text):
            handle = tar.extractfile(member)
            if handle is not None:
                files[text] = handle.read(MAX_STATUS_BYTES)


def layout_files(layout: Path, platform: str | None = None) -> dict[str, bytes]:
    """The wanted files of the image in an OCI layout, as the merged layers leave them."""
    manifest = _pick_manifest(layout, _json_file(layout / "index.json"), platform)
    files: dict[str, bytes] = {}
    for layer in manifest.get("layers") or []:
        media_type = layer.get("mediaType") if isinstance(layer, dict) else None
        if media_type not in LAYER_MEDIA_TYPES:
            raise SbomSourceInvalid(f"{layout}: layer media type {str(media_type)[:80]!r} "
                                    f"(tar or tar+gzip only)")
        try:
            with tarfile.open(_blob(layout, layer.get("digest")), "r:*") as tar:
                _apply_layer(files, tar)
        except (OSError, tarfile.TarError) as exc:
            raise SbomSourceInvalid(f"{layout}: layer {layer.get('digest')}: {exc}") from None
    return files


def read_inventory(source: Path, platform: str | None = None) -> Inventory:
    """The installed packages of a root filesystem or an OCI image layout directory."""
    if not source.is_dir():
        raise SbomSourceInvalid(f"{source}: not a directory")
    if (source / "oci-layout").is_file() and (source / "index.json").is_file():
        return inventory(layout_files(source, platform))
    return inventory(rootfs_files(source))


# --- documents ----------------------------------------------------------------------------

def _spdx_id(kind: str, name: str, index: int) -> str:
    return f"SPDXRef-{kind}-{re.sub(r'[^A-Za-z0-9.-]+', '-', name)}-{index}"


def _fingerprint(name: str, inv: Inventory) -> str:
    listing = "\n".join(f"{p.ecosystem} {p.name} {p.version} {p.arch}" for p in inv.packages)
    return hashlib.sha256(f"{name}\n{inv.distro}\n{listing}".encode()).hexdigest()


def spdx_document(name: str, inv: Inventory, created: str) -> dict[str, Any]:
    """SPDX 2.3 JSON: a root package for the image CONTAINS every installed package."""
    root = "SPDXRef-Image"
    packages: list[dict[str, Any]] = [{
        "name": name, "SPDXID": root, "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER"}]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": root}]
    for i, p in enumerate(inv.packages):
        spdx_id = _spdx_id(p.ecosystem, p.name, i)
        packages.append({
            "name": p.name, "SPDXID": spdx_id, "versionInfo": p.version,
            "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION", "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": p.purl(inv.distro)}]})
        relationships.append({"spdxElementId": root, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": spdx_id})
    return {"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
            "name": name,
            "documentNamespace": f"https://umec.io/spdx/{quote(name, safe='')}-"
                                 f"{_fingerprint(name, inv)[:32]}",
            "creationInfo": {"created": created, "creators": [f"Tool: {TOOL}"]},
            "packages": packages, "relationships": relationships}


def cyclonedx_document(name: str, inv: Inventory, created: str) -> dict[str, Any]:
    """CycloneDX 1.5 JSON: the image as metadata.component, every package a library."""
    serial = uuid.UUID(_fingerprint(name, inv)[:32], version=5)
    components = [{"type": "library", "bom-ref": p.purl(inv.distro), "name": p.name,
                   "version": p.version, "purl": p.purl(inv.distro)} for p in inv.packages]
    return {"bomFormat": "CycloneDX", "specVersion": "1.5", "serialNumber": f"urn:uuid:{serial}",
            "version": 1,
            "metadata": {"timestamp": created,
                         "tools": {"components": [{"type": "application", "name": TOOL}]},
                         "component": {"type": "container", "name": name,
                                       "bom-ref": "image"}},
            "components": components}


FORMATS: Mapping[str, Callable[[str, Inventory, str], dict[str, Any]]] = {
    "spdx": spdx_document, "cyclonedx": cyclonedx_document}
ATTEST_TYPE = {"spdx": "spdxjson", "cyclonedx": "cyclonedx"}


def sbom_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"


def iter_packages(inv: Inventory) -> Iterator[str]:
    """One line per package (``deb libc6 2.36-9``), for a human reader."""
    for p in inv.packages:
        yield f"{p.ecosystem} {p.name} {p.version}"
