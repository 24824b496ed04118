"""Image reference parsing: Docker normalisation, digests, and a fuzz test of the grammar."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from admission.core.reference import (
    ImageReference,
    InvalidReference,
    parse_reference,
    validate_digest,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text,expected", [
    ("nginx", ("docker.io", "library/nginx", "latest", None)),
    ("nginx:1.25", ("docker.io", "library/nginx", "1.25", None)),
    ("library/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("docker.io/nginx", ("docker.io", "library/nginx", "latest", None)),
    ("index.docker.io/library/nginx:1", ("docker.io", "library/nginx", "1", None)),
    ("registry-1.docker.io/team/app", ("docker.io", "team/app", "latest", None)),
    ("team/app:v1", ("docker.io", "team/app", "v1", None)),
    (f"nginx@{D}", ("docker.io", "library/nginx", None, D)),
    (f"nginx:1.25@{D}", ("docker.io", "library/nginx", "1.25", D)),
    ("127.0.0.1:5000/team/app:1.0", ("127.0.0.1:5000", "team/app", "1.0", None)),
    ("127.0.0.1:5000/app", ("127.0.0.1:5000", "app", "latest", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("localhost:5000/a/b/c:x", ("localhost:5000", "a/b/c", "x", None)),
    ("Registry.Example.COM/team/app", ("registry.example.com", "team/app", "latest", None)),
    ("ghcr.io/org/app_x.y__z-q---r:Tag_1.-x", ("ghcr.io", "org/app_x.y__z-q---r", "Tag_1.-x",
                                               None)),
    ("[::1]:5000/app:1", ("[::1]:5000", "app", "1", None)),
    ("Upper/app", ("Upper", "app", "latest", None)),  # uppercase first component is a host
])
def test_valid_references(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("Nginx", "lowercase"),
    ("team/App", "lowercase"),
    ("nginx:", "tag"),
    ("nginx:-bad", "tag"),
    ("nginx:" + "a" * 129, "tag"),
    ("nginx@sha256:abc", "sha256"),
    ("nginx@sha256:" + "AB" * 32, "sha256"),  # uppercase hex is not canonical
    ("nginx@sha512:" + "ab" * 64, "only sha256"),
    ("nginx@md5:" + "ab" * 16, "only sha256"),
    (f"nginx@{D}@{D}", "more than one"),
    ("registry.example.com/", "repository"),
    ("/app", "repository"),
    ("a//b", "repository"),
    ("app-", "repository"),
    ("-app", "repository"),
    ("a..b", "repository"),
    ("host_name:5000/app", "host"),
    ("-host.com/app", "host"),
    (" nginx", "whitespace"),
    ("ng\tinx", "whitespace"),
    ("ngïnx", "non-ASCII"),
    ("example.com/" + "a" * 250, "255"),
    ("a" * 5000, "longer"),
])
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference, match=reason) as err:
        parse_reference(text)
    assert err.value.check == "reference.invalid" and err.value.hint


def test_with_digest_and_canonical_forms() -> None:
    ref = parse_reference("127.0.0.1:5000/team/app:1.0")
    pinned = ref.with_digest(D)
    assert str(pinned) == f"127.0.0.1:5000/team/app:1.0@{D}"
    assert str(pinned.by_digest_only()) == f"127.0.0.1:5000/team/app@{D}"
    assert pinned.api_reference == D and ref.api_reference == "1.0"
    assert pinned.name == "127.0.0.1:5000/team/app" and pinned.is_pinned
    assert ref.with_tag("2").tag == "2" and pinned.with_tag("2").digest is None
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:" + "0" * 63)
    with pytest.raises(InvalidReference):
        ref.by_digest_only()
    assert validate_digest(D) == D


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_raises_only_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    assert parse_reference(str(ref)) == ref


_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[_.]|__|-{1,3})[a-z0-9]{1,5}){0,2}",
                           fullmatch=True)
_host = st.sampled_from(["", "127.0.0.1:5000/", "registry.example.com/", "localhost/",
                         "docker.io/", "index.docker.io/", "ghcr.io/"])
_tag = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(st.none(), st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True))


@settings(max_examples=200, deadline=None)
@given(_host, st.lists(_component, min_size=1, max_size=3), _tag, _digest)
def test_fuzz_generated_valid_references(host: str, path: list[str], tag: str | None,
                                         digest: str | None) -> None:
    # Docker's rule: without an explicit host, a first component with a dot (or a colon, or
    # "localhost") IS the host. Such a path is another reference, not a repository path.
    assume(host or len(path) == 1 or not ("." in path[0] or path[0] == "localhost"))
    text = host + "/".join(path) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert isinstance(ref, ImageReference)
    assert ref.repository.endswith("/".join(path))
    assert ref.digest == digest
    assert ref.tag == (tag if tag else (None if digest else "latest"))
    assert parse_reference(str(ref)) == ref
