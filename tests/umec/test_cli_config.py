"""``umec config view`` and ``umec config use-context`` (umec.cli_config), as a process with a
pipe: view never prints a token, use-context rewrites current-context atomically (comments and
mode kept) and refuses an unknown name in one line, exit 1, the file untouched."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.cli import clean_env, one_error_line, umec_process
from umec.cli_config import switched_text
from umec.cli_contexts import Context, ContextFile, parse_context_file, render_context_file

TOKEN = "operator-token-never-printed-7f3a"
FILE = """# my sites
current-context: site-a   # the one I use most
contexts:
  - name: site-a
    server: https://umec.site-a.example:8443
    token-file: site-a.token
    ca-file: site-a-ca.pem
  - name: site-b  # the lab
    server: http://127.0.0.1:8443
    token-file: /srv/tokens/b.token
"""


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    config = tmp_path / "xdg" / "umec" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(FILE)
    config.chmod(0o640)
    (config.parent / "site-a.token").write_text(TOKEN)
    env = clean_env(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["UMEC_OPERATOR_TOKEN"] = None
    return config, env


def test_view_prints_the_contexts_and_token_paths_never_a_token(
        home: tuple[Path, dict[str, str | None]]) -> None:
    config, env = home
    code, out, err = umec_process(["config", "view"], env)
    assert code == 0, err
    assert out.splitlines()[0] == f"# {config}"
    assert parse_context_file(out, config.parent) == parse_context_file(FILE, config.parent)
    assert "token-file: site-a.token" in out and "token-file: /srv/tokens/b.token" in out
    assert TOKEN not in out + err


def test_view_refuses_a_file_with_a_token_in_it_without_printing_it(
        home: tuple[Path, dict[str, str | None]]) -> None:
    config, env = home
    config.write_text(FILE.replace("    ca-file: site-a-ca.pem\n",
                                   f"    ca-file: site-a-ca.pem\n    token: {TOKEN}\n"))
    code, out, err = umec_process(["config", "view"], env)
    assert code == 2
    line = one_error_line(err, out)
    assert line.startswith("error: config.invalid: ") and "unknown key(s) token" in line
    assert TOKEN not in out + err


def test_use_context_switches_and_keeps_comments_and_mode(
        home: tuple[Path, dict[str, str | None]]) -> None:
    config, env = home
    code, out, err = umec_process(["config", "use-context", "site-b"], env)
    assert (code, out, err) == (0, "current context: site-b\n", "")
    text = config.read_text()
    assert text == FILE.replace("current-context: site-a   # the one I use most",
                                'current-context: "site-b"')
    assert parse_context_file(text, config.parent).current == "site-b"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".")] == []
    code, out, _ = umec_process(["config", "view"], env)
    assert code == 0 and "current-context: site-b" in out


def test_use_context_refuses_an_unknown_name_and_touches_nothing(
        home: tuple[Path, dict[str, str | None]]) -> None:
    config, env = home
    before = (config.read_bytes(), config.stat().st_mtime_ns, config.stat().st_ino)
    code, out, err = umec_process(["config", "use-context", "site-c"], env)
    assert code == 1 and out == ""
    line = one_error_line(err, out)
    assert line.startswith("error: config.context_unknown: no context named 'site-c'")
    assert "contexts: site-a, site-b" in line
    assert (config.read_bytes(), config.stat().st_mtime_ns, config.stat().st_ino) == before


def test_without_a_context_file_both_say_so(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "none")
    for args in (["config", "view"], ["config", "use-context", "x"]):
        code, out, err = umec_process(args, env)
        assert code == 2 and one_error_line(err, out).startswith("error: file: no context file")


# --- the rewrite --------------------------------------------------------------------------------

NAMES = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                min_size=1, max_size=20).filter(lambda s: s.strip() != "")


@given(names=st.lists(NAMES, min_size=1, max_size=4, unique=True), pick=st.integers(0, 3),
       current=st.integers(0, 3), comment=st.sampled_from(["", "# top\n", "\n\n"]))
def test_the_rewrite_reads_back_as_the_same_contexts_with_the_new_current(
        names: list[str], pick: int, current: int, comment: str) -> None:
    base = Path("/home/op/.config/umec")
    contexts = tuple(Context(n, f"https://s{i}.example") for i, n in enumerate(names))
    original = ContextFile(contexts, names[current % len(names)])
    text = comment + render_context_file(original, base)
    assert parse_context_file(text, base) == original
    name = names[pick % len(names)]
    switched = switched_text(text, original, name, base)
    assert parse_context_file(switched, base) == ContextFile(contexts, name)


def test_the_rewrite_falls_back_to_rendering_when_the_line_is_not_plain() -> None:
    base = Path("/x")
    text = "contexts:\n- {name: a, server: 'https://a.example'}\n- {name: b, server: " \
           "'https://b.example'}\ncurrent-context: >-\n  a\n"
    file = parse_context_file(text, base)
    assert file.current == "a"
    switched = switched_text(text, file, "b", base)
    assert parse_context_file(switched, base) == ContextFile(file.contexts, "b")


def test_the_file_is_replaced_not_written_in_place(
        home: tuple[Path, dict[str, str | None]]) -> None:
    """atomic_write: a new inode renamed over the old one (a reader sees old or new)."""
    config, env = home
    inode = config.stat().st_ino
    code, _, err = umec_process(["config", "use-context", "site-b"], env)
    assert code == 0, err
    assert config.stat().st_ino != inode
    assert os.access(config, os.R_OK)
