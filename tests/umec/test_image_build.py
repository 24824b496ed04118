"""The image build's pure parts (scripts/imagebuild, issue 12), fast and offline.

ELF header reader, wheel tags, Debian dependency closure, lock file, reproducible layers and
OCI layout, the wheel installer, and the slim agent's dependency closure. The build itself
downloads and compiles for minutes: it is run by hand (scripts/build-images.sh, timings in
docs/benchmarks.md). With ``UMEC_IMAGES_DIR`` set to a build's output dir, the built images
are checked too (every ELF file and wheel tag per architecture); without it those tests skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scripts.imagebuild.debdeps import DebInfo, closure, parse_control, parse_relations
from scripts.imagebuild.elf import (
    EM_AARCH64,
    EM_X86_64,
    ElfHeader,
    matches_arch,
    needed_libraries,
    read_elf_header,
)
from scripts.imagebuild.errors import (
    ElfInvalid,
    InputHashMismatch,
    LockInvalid,
    StepFailed,
    WrongArchitecture,
)
from scripts.imagebuild.lockfile import ArchPins, Lock, Pin, dump_lock, parse_lock, with_arch
from scripts.imagebuild.oci import REF_NAME, Layout, RunConfig
from scripts.imagebuild.pywheels import install_wheel, wheel_name_version, write_console_script
from scripts.imagebuild.reprotar import sort_key, walk, write_layer
from scripts.imagebuild.wheeltags import check_wheel_file, parse_wheel_file, tag_problems

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = os.environ.get("UMEC_IMAGES_DIR")


def elf_bytes(bits: int, little: bool, machine: int, tail: bytes = b"") -> bytes:
    order = "little" if little else "big"
    ident = b"\x7fELF" + bytes([bits // 32, 1 if little else 2, 1]) + bytes(9)
    return ident + (2).to_bytes(2, order) + machine.to_bytes(2, order) + tail


# -- ELF ------------------------------------------------------------------------------------

@given(st.sampled_from([32, 64]), st.booleans(), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_elf_header_fields_are_read_back(bits: int, little: bool, machine: int,
                                         tail: bytes) -> None:
    header = read_elf_header(elf_bytes(bits, little, machine, tail))
    assert header == ElfHeader(bits=bits, little_endian=little, machine=machine)


@given(st.binary(max_size=64))
def test_elf_reader_never_fails_open(data: bytes) -> None:
    """Any bytes: not ELF (None), a header, or ElfInvalid; never another exception."""
    try:
        header = read_elf_header(data)
    except ElfInvalid:
        assert data.startswith(b"\x7fELF")
        return
    assert (header is None) == (not data.startswith(b"\x7fELF"))


def test_elf_truncated_or_malformed_is_an_error() -> None:
    with pytest.raises(ElfInvalid):
        read_elf_header(b"\x7fELF\x02\x01")
    with pytest.raises(ElfInvalid, match="EI_CLASS"):
        read_elf_header(b"\x7fELF\x03\x01" + bytes(14))
    with pytest.raises(ElfInvalid, match="EI_DATA"):
        read_elf_header(b"\x7fELF\x02\x07" + bytes(14))


def test_elf_arch_match() -> None:
    aarch64 = read_elf_header(elf_bytes(64, True, EM_AARCH64))
    assert aarch64 is not None
    assert matches_arch(aarch64, "arm64") and not matches_arch(aarch64, "amd64")
    x86 = read_elf_header(elf_bytes(64, True, EM_X86_64))
    assert x86 is not None and matches_arch(x86, "amd64") and not matches_arch(x86, "arm64")
    wrong_class = read_elf_header(elf_bytes(32, True, EM_AARCH64))
    assert wrong_class is not None and not matches_arch(wrong_class, "arm64")
    big = read_elf_header(elf_bytes(64, False, EM_AARCH64))
    assert big is not None and not matches_arch(big, "arm64")


def test_elf_reader_on_this_interpreter() -> None:
    header = read_elf_header(Path(os.path.realpath(sys.executable)).read_bytes()[:20])
    assert header is not None
    if os.uname().machine == "x86_64":
        assert matches_arch(header, "amd64") and not matches_arch(header, "arm64")


def test_needed_libraries_of_real_binaries() -> None:
    python = Path("/usr/bin/python3.11")
    if python.exists():
        assert "libc.so.6" in needed_libraries(python.read_bytes())
    cross_libc = Path("/usr/aarch64-linux-gnu/lib/libc.so.6")  # gcc-aarch64-linux-gnu's
    if cross_libc.exists():
        assert needed_libraries(cross_libc.read_bytes()) == ["ld-linux-aarch64.so.1"]
    assert needed_libraries(b"#!/bin/sh\n") == []


@given(st.binary(min_size=0, max_size=400))
def test_needed_libraries_fails_closed(tail: bytes) -> None:
    """Garbage after a 64-bit header: a list of names or ElfInvalid, nothing else."""
    with contextlib.suppress(ElfInvalid):
        names = needed_libraries(elf_bytes(64, True, EM_AARCH64, tail))
        assert all(isinstance(n, str) for n in names)


# -- wheel tags -----------------------------------------------------------------------------

@pytest.mark.parametrize(("tag", "arch", "ok"), [
    ("cp311-cp311-manylinux_2_17_aarch64", "arm64", True),
    ("cp311-cp311-manylinux_2_17_aarch64", "amd64", False),
    ("cp311-abi3-manylinux_2_34_aarch64", "arm64", True),
    ("cp37-abi3-manylinux2014_x86_64", "amd64", True),
    ("cp311-cp311-linux_aarch64", "arm64", True),
    ("cp312-cp312-manylinux_2_17_aarch64", "arm64", False),
    ("cp312-abi3-manylinux_2_17_aarch64", "arm64", False),
    ("cp311-cp311-macosx_11_0_arm64", "arm64", False),
    ("cp311-cp311-musllinux_1_2_aarch64", "arm64", False),
    ("py3-none-any", "arm64", True),
    ("py2.py3-none-any", "amd64", True),
    ("py2-none-any", "amd64", False),
    ("cp311-cp311-manylinux_2_17_armv7l", "arm64", False),
])
def test_wheel_tag_fits_arch(tag: str, arch: str, ok: bool) -> None:
    problems = tag_problems(parse_wheel_file(f"Wheel-Version: 1.0\nTag: {tag}\n"), arch)
    assert (problems == []) == ok, problems


def test_every_tag_must_fit() -> None:
    text = ("Tag: cp311-cp311-manylinux_2_17_aarch64\n"
            "Tag: cp311-cp311-manylinux_2_17_x86_64\n")
    with pytest.raises(WrongArchitecture, match="x86_64"):
        check_wheel_file(text, "arm64", where="numpy")
    compressed = "Tag: cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64\n"
    assert [t.platform for t in parse_wheel_file(compressed)] == [
        "manylinux2014_aarch64", "manylinux_2_17_aarch64"]


def test_wheel_without_tag_or_malformed_tag_is_refused() -> None:
    with pytest.raises(WrongArchitecture, match="no Tag"):
        parse_wheel_file("Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
    with pytest.raises(WrongArchitecture, match="python-abi-platform"):
        parse_wheel_file("Tag: cp311-manylinux_2_17_aarch64\n")


@given(st.text(max_size=200))
def test_wheel_file_parser_fails_closed(text: str) -> None:
    try:
        tags = parse_wheel_file(text)
    except WrongArchitecture:
        return
    assert tags and all(t.python and t.abi and t.platform for t in tags)


# -- Debian relations and closure -----------------------------------------------------------

def test_relations_drop_versions_and_qualifiers() -> None:
    assert parse_relations("libc6 (>= 2.34), media-types | mime-support, libfoo:any, "
                           "python3 (<< 3.12) [amd64] <!nocheck>") == (
        ("libc6",), ("media-types", "mime-support"), ("libfoo",), ("python3",))
    assert parse_relations("") == ()
    with pytest.raises(LockInvalid):
        parse_relations("libc6 (>= 2.34")


_names = st.from_regex(r"[a-z0-9][a-z0-9+.-]{1,12}", fullmatch=True)


@given(st.lists(st.lists(st.tuples(_names, st.sampled_from(["", " (>= 1.0)", ":any",
                                                            " (= 2:1.2-3+deb12u1)"])),
                         min_size=1, max_size=3), max_size=6))
def test_relations_property(groups: list[list[tuple[str, str]]]) -> None:
    text = ", ".join(" | ".join(n + q for n, q in g) for g in groups)
    assert parse_relations(text) == tuple(tuple(n for n, _ in g) for g in groups)


@given(st.text(max_size=80))
def test_relation_parser_fails_closed(text: str) -> None:
    try:
        parsed = parse_relations(text)
    except LockInvalid:
        return
    assert all(all(name for name in group) for group in parsed)


def test_control_fields() -> None:
    info = parse_control("Package: python3.11-minimal\nVersion: 3.11.2-6\n"
                         "Pre-Depends: libc6 (>= 2.36)\nDepends: libpython3.11-minimal,\n"
                         " zlib1g\nProvides: python3.11-x\nDescription: x\n")
    assert info == DebInfo("python3.11-minimal", "3.11.2-6",
                           (("libc6",), ("libpython3.11-minimal",), ("zlib1g",)),
                           ("python3.11-x",))
    with pytest.raises(LockInvalid):
        parse_control("Version: 1\n")


def test_closure_skips_what_only_dpkg_needs() -> None:
    packages = {
        "python3.11-minimal": DebInfo("python3.11-minimal", "1", (("libc6",), ("dpkg",))),
        "libc6": DebInfo("libc6", "1"),
        "dpkg": DebInfo("dpkg", "1", (("tar",),)),
        "tar": DebInfo("tar", "1"),
        "ca-certificates": DebInfo("ca-certificates", "1", (("openssl",), ("debconf",
                                                                          "debconf-2.0"))),
        "libstdc++6": DebInfo("libstdc++6", "1", (("libgcc-s1", "libgcc1"),)),
        "libgcc-s1": DebInfo("libgcc-s1", "1", provides=("libgcc1",)),
        "media": DebInfo("media", "1", (("mime-support", "virtual-mime"),)),
        "mime-provider": DebInfo("mime-provider", "1", provides=("virtual-mime",)),
    }
    taken, missing = closure(["python3.11-minimal", "ca-certificates", "libstdc++6", "media"],
                             packages)
    assert taken == ["ca-certificates", "libc6", "libgcc-s1", "libstdc++6", "media",
                     "mime-provider", "python3.11-minimal"]
    assert missing == []
    taken, missing = closure(["needs-ghost"], {"needs-ghost": DebInfo(
        "needs-ghost", "1", (("ghost",),))})
    assert missing == ["ghost"]


# -- lock file ------------------------------------------------------------------------------

_pin = st.builds(Pin, name=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
                 version=st.from_regex(r"[0-9][0-9.+~-]{0,10}", fullmatch=True),
                 filename=st.from_regex(r"[a-z][a-z0-9_.-]{0,30}\.(deb|whl)", fullmatch=True)
                 .filter(lambda f: ".." not in f),
                 sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
_pins = st.lists(_pin, max_size=4, unique_by=lambda p: p.filename).map(tuple)


@given(st.dictionaries(st.sampled_from(["umec-trust", "umec-agent", "tpm2-pytss-sysroot"]),
                       st.dictionaries(st.sampled_from(["amd64", "arm64"]),
                                       st.builds(ArchPins, _pins, _pins), max_size=2),
                       max_size=3), _pins, _pins)
def test_lock_round_trip(images: dict[str, dict[str, ArchPins]], sources: tuple[Pin, ...],
                         tools: tuple[Pin, ...]) -> None:
    lock = Lock("bookworm", images, sources, tools)
    text = dump_lock(lock)
    parsed = parse_lock(text)
    assert dump_lock(parsed) == text
    for image, arches in images.items():
        for arch, pins in arches.items():
            assert parsed.pins(image, arch) == ArchPins(tuple(sorted(pins.debs)),
                                                        tuple(sorted(pins.wheels)))


@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12).map(json.dumps)))
@settings(max_examples=200)
def test_lock_parser_fails_closed(text: str) -> None:
    with contextlib.suppress(LockInvalid):
        parse_lock(text)


GOOD_PIN = {"name": "libc6", "version": "2.36-9+deb12u14", "sha256": "a" * 64,
            "filename": "libc6_2.36-9+deb12u14_arm64.deb"}


def lock_text(pin: dict[str, str], arch: str = "arm64") -> str:
    return json.dumps({"format": 1, "suite": "bookworm", "sources": [], "build_tools": [],
                       "images": {"umec-agent": {arch: {"debs": [pin], "wheels": []}}}})


@pytest.mark.parametrize(("change", "why"), [
    ({"filename": "../../etc/passwd"}, "filename"),
    ({"filename": "sub/dir.deb"}, "filename"),
    ({"sha256": "A" * 64}, "sha256"),
    ({"sha256": "a" * 63}, "sha256"),
    ({"name": ""}, "name"),
    ({"extra": "x"}, "exactly"),
])
def test_lock_refuses_bad_pins(change: dict[str, str], why: str) -> None:
    with pytest.raises(LockInvalid, match=why):
        parse_lock(lock_text({**GOOD_PIN, **change}))


def test_lock_refuses_unknown_arch_and_duplicates() -> None:
    assert parse_lock(lock_text(GOOD_PIN)).pins("umec-agent", "arm64") is not None
    with pytest.raises(LockInvalid, match="architecture"):
        parse_lock(lock_text(GOOD_PIN, arch="s390x"))
    body = json.loads(lock_text(GOOD_PIN))
    body["images"]["umec-agent"]["arm64"]["debs"].append(GOOD_PIN)
    with pytest.raises(LockInvalid, match="twice"):
        parse_lock(json.dumps(body))


def test_with_arch_replaces_one_platform() -> None:
    pin = Pin(**GOOD_PIN)
    lock = with_arch(Lock("bookworm", {}), "umec-agent", "arm64", ArchPins((pin,), ()))
    lock = with_arch(lock, "umec-agent", "amd64", ArchPins((), (pin,)))
    assert lock.pins("umec-agent", "arm64") == ArchPins((pin,), ())
    assert lock.pins("umec-agent", "amd64") == ArchPins((), (pin,))


def test_the_committed_lock_parses_and_pins_both_images() -> None:
    lock = parse_lock((REPO / "scripts" / "images.lock.json").read_text())
    for image in ("umec-trust", "umec-agent"):
        for arch in ("amd64", "arm64"):
            pins = lock.pins(image, arch)
            assert pins is not None and pins.debs and pins.wheels, (image, arch)
    agent = {p.name for p in lock.pins("umec-agent", "arm64").wheels}  # type: ignore[union-attr]
    assert not agent & {"onnxruntime", "opencv-python-headless", "sigstore", "fastapi",
                        "numpy", "kubernetes", "sqlalchemy"}


def test_a_downloaded_input_with_another_hash_is_refused(tmp_path: Path) -> None:
    """A .deb or wheel whose bytes differ from the lock's pin stops the build."""
    from scripts.imagebuild import debian, pywheels
    deb = tmp_path / "libc6_2.36-9_arm64.deb"
    deb.write_bytes(b"tampered")
    good = Pin("libc6", "2.36-9", deb.name, hashlib.sha256(b"tampered").hexdigest())
    debian.check_pins([deb], [good])
    with pytest.raises(InputHashMismatch, match="the lock pins"):
        debian.check_pins([deb], [Pin("libc6", "2.36-9", deb.name, "0" * 64)])
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not the pinned wheel")
    with pytest.raises(InputHashMismatch, match=r"demo-1\.0"):
        pywheels.fetch_pinned([Pin("demo", "1.0", wheel.name, "1" * 64)], "arm64", tmp_path)


# -- reproducible layers and the OCI layout --------------------------------------------------

def make_tree(root: Path, mtime: int, order: list[str]) -> None:
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
    (root / "bin").mkdir(exist_ok=True)
    if not (root / "bin/link").is_symlink():
        (root / "bin/link").symlink_to("../a/b.txt")
    (root / "data").mkdir(exist_ok=True)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def test_layer_bytes_depend_only_on_content(tmp_path: Path) -> None:
    epoch = 1_700_000_000
    one, two = tmp_path / "one", tmp_path / "two"
    make_tree(one, epoch + 500, ["a/b.txt", "a-b/c.txt", "z.txt"])
    make_tree(two, epoch + 9000, ["z.txt", "a-b/c.txt", "a/b.txt"])
    first = write_layer(one, tmp_path / "out1", epoch=epoch, owners={"data": (10001, 10001)})
    second = write_layer(two, tmp_path / "out2", epoch=epoch, owners={"data": (10001, 10001)})
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    import gzip
    import tarfile
    with gzip.open(first.path) as raw, tarfile.open(fileobj=raw) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert [m for m in members] == ["a", "a/b.txt", "a-b", "a-b/c.txt", "bin", "bin/link",
                                    "data", "z.txt"]
    assert all(m.mtime == epoch and m.uname == "" for m in members.values())
    assert (members["data"].uid, members["a"].uid) == (10001, 0)
    assert members["bin/link"].linkname == "../a/b.txt"
    older = write_layer(one, tmp_path / "out3", epoch=epoch + 10_000)
    assert older.digest != first.digest  # mtimes before the epoch are kept


def test_layer_refuses_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StepFailed, match="only files"):
        write_layer(tmp_path, tmp_path.parent / "fifo-out", epoch=0)


def test_sort_key_puts_parents_first(tmp_path: Path) -> None:
    assert sorted(["a-b", "a/b", "a"], key=sort_key) == ["a", "a/b", "a-b"]
    (tmp_path / "x/y").mkdir(parents=True)
    assert walk(tmp_path) == ["x", "x/y"]


def build_layout(root: Path, tree: Path, epoch: int) -> str:
    layout = Layout(root)
    run = RunConfig(("/usr/local/bin/umec",), "10001:10001", ("PATH=/usr/bin",), "/", {})
    manifests = {}
    for arch in ("amd64", "arm64"):
        layer = write_layer(tree, root / "tmp", epoch=epoch)
        manifests[arch] = layout.image(arch, [(layer, "test")], run, epoch=epoch,
                                       annotations={"org.opencontainers.image.version": "1"})
    shutil.rmtree(root / "tmp")
    return layout.finish("0.1.0", manifests, {}).digest


def test_oci_layout_is_reproducible_and_readable(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree, 1_700_000_000, ["usr/local/bin/umec"])
    first = build_layout(tmp_path / "l1", tree, 1_600_000_000)
    assert build_layout(tmp_path / "l2", tree, 1_600_000_000) == first
    assert build_layout(tmp_path / "l3", tree, 1_600_000_001) != first
    index = json.loads((tmp_path / "l1/index.json").read_text())
    assert [m["annotations"][REF_NAME] for m in index["manifests"]] == [
        "0.1.0", "0.1.0-amd64", "0.1.0-arm64"]
    assert index["manifests"][0]["digest"] == first
    if shutil.which("skopeo"):  # the real reader: skopeo sees one index of two platforms
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'l1'}:0.1.0"],
                             capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == first
        platforms = [m["platform"]["architecture"] for m in json.loads(raw)["manifests"]]
        assert platforms == ["amd64", "arm64"]


# -- the wheel installer --------------------------------------------------------------------

def make_wheel(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return path


def test_install_wheel_places_data_scripts_and_entry_points(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "demo/__init__.py": "X = 1\n",
        "demo-1.0.data/scripts/demo-tool": "#!python\nprint('hi')\n",
        "demo-1.0.data/headers/demo.h": "int x;\n",
        "demo-1.0.dist-info/WHEEL": "Tag: py3-none-any\n",
        "demo-1.0.dist-info/entry_points.txt": "[console_scripts]\ndemo = demo.cli:app\n",
    })
    rootfs = tmp_path / "rootfs"
    assert install_wheel(wheel, rootfs) == ["demo=demo.cli:app"]
    site = rootfs / "usr/local/lib/python3.11/dist-packages"
    assert (site / "demo/__init__.py").read_text() == "X = 1\n"
    tool = rootfs / "usr/local/bin/demo-tool"
    assert tool.read_text().startswith("#!/usr/bin/python3.11\n") and tool.stat().st_mode & 0o111
    assert not list(rootfs.rglob("demo.h"))
    assert (site / "demo-1.0.dist-info/INSTALLER").exists()
    script = write_console_script(rootfs, "demo=demo.cli:app")
    assert "from demo.cli import app" in script.read_text()
    assert wheel_name_version("Typing_Extensions-4.16.0-py3-none-any.whl") == (
        "typing-extensions", "4.16.0")


# Every escape lands inside tmp_path should the guard ever break (a mutant of it once wrote
# the host's /etc/passwd when these members named it): the rootfs sits two levels down, and the
# absolute member names a file in tmp_path.
@pytest.mark.parametrize("member", ["../../escaped", "{abs}", "a/../../../escaped"])
def test_install_wheel_refuses_paths_outside(tmp_path: Path, member: str) -> None:
    target = tmp_path / "abs-escaped"
    member = member.format(abs=target)
    wheel = make_wheel(tmp_path / "evil-1.0-py3-none-any.whl", {member: "x"})
    rootfs = tmp_path / "one" / "two" / "rootfs"
    with pytest.raises(StepFailed, match="escapes"):
        install_wheel(wheel, rootfs)
    assert not target.exists()
    assert not (tmp_path / "one" / "escaped").exists()
    assert not (tmp_path / "one" / "two" / "escaped").exists()


# -- the slim agent: what `umec agent` imports is in the agent extra's closure ---------------

def _closure(requirements: list[str]) -> set[str]:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep)
    return seen


def agent_extra() -> list[str]:
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["agent"])


def test_agent_imports_only_the_agent_extra() -> None:
    """`umec agent`'s CLI and agent process load only distributions the agent extra brings."""
    from packaging.utils import canonicalize_name
    # Modules loaded before the probe (site's .pth hooks such as setuptools' distutils shim)
    # are the development venv's, not the agent's.
    probe = ("import sys, json, importlib.metadata as m\n"
             "before = set(sys.modules)\n"
             "sys.modules.setdefault('httpx._main', None)\n"
             "import umec.cli, umec.agent_process, httpx, attest.agent, attest.tpm.device\n"
             "httpx.Client()\n"
             "dists = m.packages_distributions()\n"
             "print(json.dumps(sorted({d for mod in list(sys.modules) "
             "if mod not in before for d in dists.get(mod.split('.')[0], [])})))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=120)
    loaded = {canonicalize_name(d) for d in json.loads(proc.stdout)} - {"umec-trust"}
    allowed = _closure(agent_extra())
    assert loaded <= allowed, f"not in the agent extra: {sorted(loaded - allowed)}"
    assert "tpm2-pytss" in loaded and "cryptography" in loaded
    assert not allowed & {"onnxruntime", "opencv-python-headless", "sigstore", "fastapi",
                          "numpy", "kubernetes", "sqlalchemy", "uvicorn"}


# -- deploy manifests name the images that are built ---------------------------------------

def test_manifests_use_the_built_images() -> None:
    import yaml
    expected = {"agent-daemonset.yaml": "registry.local/umec/umec-agent:0.1.0",
                "server.yaml": "registry.local/umec/umec-trust:0.1.0",
                "webhook.yaml": "registry.local/umec/umec-trust:0.1.0"}
    for name, image in expected.items():
        docs = [d for d in yaml.safe_load_all((REPO / "deploy" / name).read_text()) if d]
        images = {c["image"] for d in docs if d.get("kind") in ("Deployment", "DaemonSet")
                  for c in d["spec"]["template"]["spec"]["containers"]}
        assert images == {image}, name


# -- built images (UMEC_IMAGES_DIR=<scripts/build-images.sh OUT_DIR>) ------------------------

needs_images = pytest.mark.skipif(not IMAGES_DIR, reason="UMEC_IMAGES_DIR not set: no built "
                                  "images to check (scripts/build-images.sh OUT_DIR)")


@needs_images
@pytest.mark.parametrize("image", ["umec-agent", "umec-trust"])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_built_image_is_all_one_architecture(image: str, arch: str) -> None:
    from scripts.imagebuild.check import static_check
    layout = Path(str(IMAGES_DIR)) / "oci" / image
    if not layout.is_dir():
        pytest.skip(f"{layout} not built")
    report = static_check(layout, "0.1.0", arch)
    assert report.elf > 0 and report.wheels > 0


@needs_images
def test_built_indexes_have_both_platforms() -> None:
    for layout in sorted((Path(str(IMAGES_DIR)) / "oci").iterdir()):
        index = json.loads((layout / "index.json").read_text())
        refs = [m["annotations"][REF_NAME] for m in index["manifests"]]
        assert refs[0] == "0.1.0" and {"0.1.0-amd64", "0.1.0-arm64"} <= set(refs)


def one_arch_layout(root: Path, tree: Path) -> Path:
    layout = Layout(root)
    run = RunConfig(("/usr/local/bin/umec",), "10001:10001", ("PATH=/usr/bin",), "/", {})
    layer = write_layer(tree, root / "tmp", epoch=0)
    manifest = layout.image("arm64", [(layer, "test")], run, epoch=0, annotations={})
    layout.finish("0.1.0", {"arm64": manifest}, {})
    return root


CROSS_LIBC = Path("/usr/aarch64-linux-gnu/lib/libc.so.6")


@pytest.mark.skipif(not CROSS_LIBC.exists(), reason="gcc-aarch64-linux-gnu not installed")
def test_static_check_finds_foreign_code_and_missing_libraries(tmp_path: Path) -> None:
    from scripts.imagebuild.check import static_check
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    shutil.copy(CROSS_LIBC, tree / "lib/libc.so.6")
    with pytest.raises(WrongArchitecture, match=r"needs ld-linux-aarch64\.so\.1"):
        static_check(one_arch_layout(tmp_path / "l1", tree), "0.1.0", "arm64")
    (tree / "lib/ld-linux-aarch64.so.1").symlink_to("libc.so.6")  # any file of that name
    report = static_check(one_arch_layout(tmp_path / "l2", tree), "0.1.0", "arm64")
    assert (report.elf, report.libraries) == (1, 1)
    shutil.copy(os.path.realpath(sys.executable), tree / "lib/python")
    with pytest.raises(WrongArchitecture, match="lib/python: ELF 64-bit x86_64"):
        static_check(one_arch_layout(tmp_path / "l3", tree), "0.1.0", "arm64")


# -- F4: nothing is written, read or compiled through a symlink out of the rootfs -------------
# Every "host" path below is inside tmp_path (a broken guard writes there, never onto the
# machine): an absolute symlink names tmp_path/host/..., which the rootfs resolves as
# rootfs/<tmp_path>/host/....

def make_deb(path: Path, tree: Path, name: str) -> Path:
    """A real .deb of ``tree`` (dpkg-deb --build, members in dpkg's order)."""
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "--build", str(tree), str(path)],
                   check=True, capture_output=True)
    return path


def in_rootfs(rootfs: Path, host_path: Path) -> Path:
    return rootfs / str(host_path).lstrip("/")


def test_extraction_never_writes_through_an_earlier_packages_symlink(tmp_path: Path) -> None:
    from scripts.imagebuild.debian import extract
    host = tmp_path / "host"
    (host / "certs").mkdir(parents=True)
    (host / "motd").write_text("host's\n")
    one = tmp_path / "one"  # like openssl: usr/lib/ssl/certs -> /etc/ssl/certs
    (one / "usr/lib/ssl").mkdir(parents=True)
    (one / "usr/lib/ssl/certs").symlink_to(host / "certs")
    (one / "etc").mkdir()
    (one / "etc/motd").symlink_to(host / "motd")
    two = tmp_path / "two"  # a later package with files below and at those symlinks
    (two / "usr/lib/ssl/certs").mkdir(parents=True)
    (two / "usr/lib/ssl/certs/evil.pem").write_text("evil\n")
    (two / "etc").mkdir()
    (two / "etc/motd").write_text("image's\n")
    debs = [make_deb(tmp_path / "a_1.0_all.deb", one, "a"),
            make_deb(tmp_path / "b_1.0_all.deb", two, "b")]
    rootfs = tmp_path / "rootfs"
    extract(debs, rootfs)
    assert list((host / "certs").iterdir()) == []
    assert (host / "motd").read_text() == "host's\n"
    assert in_rootfs(rootfs, host / "certs/evil.pem").read_text() == "evil\n"
    motd = rootfs / "etc/motd"
    assert not motd.is_symlink() and motd.read_text() == "image's\n"


def tar_of(entries: list[tuple[str, str | None, str | None]]) -> bytes:
    """(name, symlink target or None, body or None for a directory) as an uncompressed tar."""
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, link, body in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                archive.addfile(info)
            elif body is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size = len(body.encode())
                archive.addfile(info, io.BytesIO(body.encode()))
    return out.getvalue()


@pytest.mark.parametrize("entries", [
    [("./a", None, None), ("./a/up", "../../../../../../../../..{host}", None),
     ("./a/up/evil", None, "x")],  # a relative symlink above the root
    [("./x/../../{rel}/evil", None, "x")],  # '..' in a member name
    [("./loop", "loop2", None), ("./loop2", "loop", None), ("./loop/evil", None, "x")],
])
def test_extraction_refuses_what_leaves_the_rootfs(tmp_path: Path,
                                                   entries: list[tuple[str, str | None,
                                                                       str | None]]) -> None:
    from scripts.imagebuild.confine import extract_tar
    from scripts.imagebuild.errors import PathEscapes
    host = tmp_path / "one" / "host"
    host.mkdir(parents=True)
    rootfs = tmp_path / "one" / "two" / "rootfs"
    filled = [(n.format(host=host, rel="host"), t and t.format(host=host), b)
              for n, t, b in entries]
    with pytest.raises(PathEscapes):
        extract_tar(tar_of(filled), rootfs)
    assert list(host.iterdir()) == []


def test_system_files_slim_and_ca_bundle_stay_inside(tmp_path: Path) -> None:
    from scripts.imagebuild.debian import ca_bundle, slim
    from scripts.imagebuild.rootfs import write_system_files
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/passwd").write_text("host\n")
    (host / "home").mkdir(mode=0o700)
    (host / "man/man1").mkdir(parents=True)
    (host / "man/man1/ls.1").write_text("host's manual\n")
    (host / "secret.crt").write_text("host's secret\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/passwd").symlink_to(host / "etc/passwd")
    (rootfs / "home").symlink_to(host / "home")
    (rootfs / "usr/share/ca-certificates/mozilla").mkdir(parents=True)
    (rootfs / "usr/share/man").symlink_to(host / "man")
    (rootfs / "usr/share/ca-certificates/mozilla/a.crt").symlink_to(host / "secret.crt")
    in_rootfs(rootfs, host / "secret.crt").parent.mkdir(parents=True)
    in_rootfs(rootfs, host / "secret.crt").write_text("image's cert\n")
    (rootfs / "etc/ssl").mkdir()
    (rootfs / "etc/ssl/certs").symlink_to(host)
    write_system_files(rootfs)
    slim(rootfs)
    ca_bundle(rootfs)
    assert (host / "etc/passwd").read_text() == "host\n"
    assert list((host / "home").iterdir()) == []
    assert (host / "man/man1/ls.1").exists()
    assert not (host / "ca-certificates.crt").exists()
    assert "umec:x:10001" in (rootfs / "etc/passwd").read_text()
    assert in_rootfs(rootfs, host / "home/umec").stat().st_mode & 0o7777 == 0o750
    bundle = in_rootfs(rootfs, host / "ca-certificates.crt").read_text()
    assert bundle == "image's cert\n"


def pyc_names(pyc: Path) -> set[str]:
    import marshal
    return set(marshal.loads(pyc.read_bytes()[16:]).co_names)


def test_a_symlinked_py_compiles_from_the_rootfs_not_the_host(tmp_path: Path) -> None:
    """sitecustomize.py -> /etc/python3.11/sitecustomize.py: the image's file, not the host's
    (the reviewer's PoC found the host's code in a built layer)."""
    from scripts.imagebuild.errors import PathEscapes
    from scripts.imagebuild.rootfs import compile_bytecode
    host = tmp_path / "host"
    host.mkdir()
    (host / "sitecustomize.py").write_text("HOST_CODE = 1\n")
    (host / "only_host.py").write_text("ONLY_HOST = 1\n")
    rootfs = tmp_path / "rootfs"
    lib = rootfs / "usr/lib/python3.11"
    lib.mkdir(parents=True)
    (lib / "sitecustomize.py").symlink_to(host / "sitecustomize.py")
    (lib / "dangling.py").symlink_to(host / "only_host.py")
    (lib / "plain.py").write_text("PLAIN = 1\n")
    in_rootfs(rootfs, host).mkdir(parents=True)
    in_rootfs(rootfs, host / "sitecustomize.py").write_text("IMAGE_CODE = 1\n")
    compile_bytecode(rootfs, ["usr/lib/python3.11"])
    cache = lib / "__pycache__"
    assert pyc_names(cache / "sitecustomize.cpython-311.pyc") == {"IMAGE_CODE"}
    assert pyc_names(cache / "plain.cpython-311.pyc") == {"PLAIN"}
    assert not (cache / "dangling.cpython-311.pyc").exists()
    assert sorted(p.name for p in host.iterdir()) == ["only_host.py", "sitecustomize.py"]
    # a __pycache__ that is a symlink out of the rootfs is refused, nothing written there
    site = rootfs / "usr/local/lib/python3.11/dist-packages"
    site.mkdir(parents=True)
    (site / "mod.py").write_text("M = 1\n")
    (site / "__pycache__").symlink_to(host)
    with pytest.raises(PathEscapes):
        compile_bytecode(rootfs, ["usr/local/lib/python3.11/dist-packages"])
    assert sorted(p.name for p in host.iterdir()) == ["only_host.py", "sitecustomize.py"]


_link_names = st.sampled_from(["a", "b", "c", "d"])
_targets = st.lists(st.sampled_from(["a", "b", "..", ".", "/", "c", "/a", "d"]),
                    min_size=1, max_size=5).map("/".join)


@given(st.dictionaries(_link_names, _targets, max_size=4),
       st.lists(st.sampled_from(["a", "b", "c", "d", "..", "e"]), max_size=6))
@settings(max_examples=150, deadline=None)
def test_resolve_in_stays_inside_or_refuses(links: dict[str, str], path: list[str]) -> None:
    """Any symlinks (absolute, relative, '..', loops) and any path: the result lies in the root
    and has no symlink but the last component, or PathEscapes."""
    import tempfile

    from scripts.imagebuild.confine import resolve_in
    from scripts.imagebuild.errors import PathEscapes
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for name, target in links.items():
            (root / name).symlink_to(target)
        try:
            found = resolve_in(root, "/".join(path))
        except PathEscapes:
            return
        assert found == root or root in found.parents
        for parent in list(found.relative_to(root).parents)[:-1]:
            assert not (root / parent).is_symlink()


# -- F5: cached inputs are held to the lock; the lock changes only with --update-lock ---------

def test_a_cached_sdist_is_compared_with_its_pin(tmp_path: Path) -> None:
    """The reviewer's PoC: a cached tpm2-pytss sdist of other bytes passed a pin of 0...0."""
    from scripts.imagebuild import tpm2
    cache = tmp_path / "sources"
    cache.mkdir()
    sdist = cache / "tpm2_pytss-3.0.0.tar.gz"
    sdist.write_bytes(b"tampered")
    zero = Pin("tpm2-pytss", "3.0.0", sdist.name, "0" * 64)
    with pytest.raises(InputHashMismatch, match=r"tpm2_pytss-3\.0\.0\.tar\.gz"):
        tpm2.fetch_sdist(cache, zero)
    good = Pin("tpm2-pytss", "3.0.0", sdist.name, hashlib.sha256(b"tampered").hexdigest())
    assert tpm2.fetch_sdist(cache, good) == good


def tool_wheel(path: Path) -> Path:
    return make_wheel(path, {
        "demotool/__init__.py": "X = 1\n",
        "demotool-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demotool\nVersion: 1.0\n",
        "demotool-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: t\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n",
        "demotool-1.0.dist-info/RECORD": "",
    })


def test_a_cached_build_venv_is_reused_only_for_the_same_tools(tmp_path: Path) -> None:
    """A venv left by another build (other or tampered tools, or no record) is rebuilt."""
    from scripts.imagebuild import tpm2
    tools = [tool_wheel(tmp_path / "demotool-1.0-py3-none-any.whl")]
    buildenv = tmp_path / "buildenv"
    (buildenv / "bin").mkdir(parents=True)
    (buildenv / "bin/python").write_text("#!/bin/sh\necho planted\n")
    (buildenv / "umec-build-inputs").write_text("python x\nother-1.0-py3-none-any.whl 00\n")
    python = tpm2.build_env(buildenv, tools)
    assert "planted" not in python.read_bytes().decode(errors="replace")
    subprocess.run([str(python), "-c", "import demotool"], check=True)
    marker = buildenv / "kept"
    marker.write_text("")
    assert tpm2.build_env(buildenv, tools) == python and marker.exists()  # same tools: reused


def test_without_update_lock_the_lock_is_never_written(tmp_path: Path) -> None:
    from scripts.imagebuild.build import finish_lock
    from scripts.imagebuild.errors import LockChanged
    pin = Pin("libc6", "2.36-9", "libc6_2.36-9_arm64.deb", "a" * 64)
    lock = Lock("bookworm", {"umec-agent": {"arm64": ArchPins((pin,), ())}})
    path = tmp_path / "images.lock.json"
    path.write_text(dump_lock(lock))
    finish_lock(path, lock, update=False)  # the same inputs: fine
    other = with_arch(lock, "umec-agent", "arm64",
                      ArchPins((Pin("libc6", "2.36-9", pin.filename, "b" * 64),), ()))
    with pytest.raises(LockChanged, match=r"umec-agent\.arm64\.debs libc6_2\.36-9_arm64\.deb"):
        finish_lock(path, other, update=False)
    assert parse_lock(path.read_text()) == lock
    finish_lock(path, other, update=True)
    assert parse_lock(path.read_text()) == other


def test_without_update_lock_missing_pins_or_lock_are_errors(tmp_path: Path) -> None:
    import argparse

    from scripts.imagebuild import build
    inputs = build.Inputs(tmp_path, "c" * 40, 0, "0.1.0", tmp_path / "w.whl", {None: []},
                          tmp_path / "c.txt", Lock("bookworm", {}), update=False)
    with pytest.raises(LockInvalid, match=r"umec-agent \(arm64\)"):
        build._pins(inputs, "umec-agent", "arm64")
    with pytest.raises(LockInvalid, match="sources and no build_tools"):
        build.check_lock_complete(inputs.lock)
    args = argparse.Namespace(out=tmp_path / "out", commit="HEAD", lock=tmp_path / "no.json",
                              update_lock=False, arch=["amd64"], images=["umec-agent"])
    with pytest.raises(LockInvalid, match="--update-lock"):
        build.setup(args)
    assert not args.lock.exists()
