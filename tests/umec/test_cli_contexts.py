"""The context file's parser (umec.cli_contexts): strict, typed refusals only, and what it
renders it reads back."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from umec.cli_contexts import (
    Context,
    ContextFile,
    ContextFileInvalid,
    parse_context_file,
    render_context_file,
)

BASE = Path("/home/op/.config/umec")
GOOD = """
current-context: a
contexts:
  - {name: a, server: "https://umec.example:8443/", token-file: a.token, ca-file: /etc/ca.pem}
  - {name: b, server: "http://127.0.0.1:8443"}
"""


def test_a_good_file() -> None:
    parsed = parse_context_file(GOOD, BASE)
    assert parsed.current == "a"
    assert parsed.named("a") == Context("a", "https://umec.example:8443", BASE / "a.token",
                                        Path("/etc/ca.pem"))
    assert parsed.named("b") == Context("b", "http://127.0.0.1:8443")
    assert parse_context_file("", BASE) == ContextFile((), None)


@pytest.mark.parametrize(("text", "needle"), [
    ("[1, 2]", "expected a mapping"),
    ("current-context: a\ncontexts: []\n", "no context named 'a'"),
    ("contexts: [{name: a, server: 'ftp://x'}]", "not an http(s) URL"),
    ("contexts: [{name: a, server: 'https://'}]", "not an http(s) URL"),
    ("contexts: [{name: a, server: 'https://x', token: t}]", "unknown key(s) token"),
    ("contexts: [{name: a, server: 'https://x'}, {name: a, server: 'https://y'}]",
     "same name"),
    ("contexts: {a: 1}", "expected a list"),
    ("contexts: [{server: 'https://x'}]", "contexts[0].name"),
    ("current-contxt: a", "unknown key(s) current-contxt"),
    ("contexts: [{name: a, server: 'https://x', ca-file: ''}]", "ca-file"),
    ("a: [", "not YAML"),
])
def test_refusals_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ContextFileInvalid) as caught:
        parse_context_file(text, BASE)
    assert needle in caught.value.detail
    assert caught.value.check == "config.invalid" and caught.value.exit_code == 2


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_typed(text: str) -> None:
    try:
        parsed = parse_context_file(text, BASE)
    except ContextFileInvalid:
        return
    assert parsed.current is None or parsed.named(parsed.current) is not None


names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)
servers = st.sampled_from(["https://umec.example:8443", "http://127.0.0.1:1",
                           "https://[::1]:8443/base"])
paths = st.none() | st.sampled_from([BASE / "t.token", Path("/etc/umec/ca.pem")])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, servers, paths, paths), max_size=5, unique_by=lambda c: c[0]),
       st.data())
def test_render_then_parse_is_the_identity(raw: list[tuple[str, str, Path | None,
                                                          Path | None]],
                                           data: st.DataObject) -> None:
    contexts = tuple(Context(*c) for c in raw)
    current = data.draw(st.sampled_from([None, *(c.name for c in contexts)]))
    file = ContextFile(contexts, current)
    assert parse_context_file(render_context_file(file, BASE), BASE) == file


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["name", "server", "token-file",
                                                       "ca-file", "contexts",
                                                       "current-context", "x"]), inner,
                                      max_size=4), max_leaves=20))
def test_any_yaml_shape_parses_or_is_refused_typed(doc: object) -> None:
    with contextlib.suppress(ContextFileInvalid):
        parse_context_file(yaml.safe_dump(doc), BASE)
