"""Which private key file modes keys/ trusts (keys.storage.private_mode_problem): its own files
0600 at most; a root-owned file may also be readable by its group (a Kubernetes Secret volume
with fsGroup: root:<fsGroup> 0440) when the reader is not root; never anything for others, never
group write."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from keys.storage import private_mode_problem

MODES = st.integers(min_value=0, max_value=0o7777)
USERS = st.sampled_from([0, 1000, 10001, 20000])


@given(MODES, USERS, USERS)
def test_the_rule(mode: int, owner: int, euid: int) -> None:
    problem = private_mode_problem(0o100000 | mode, owner, euid)
    if mode & 0o007:
        assert problem, "others may never have access"
    if mode & 0o030:
        assert problem, "the group may never write or execute"
    if mode & 0o040 and not (owner == 0 and euid != 0):
        assert problem, "group read only for a root-owned file read by a non-root process"
    if owner not in (euid, 0):
        assert problem, "only the reader's own or root's file (PostgreSQL's rule)"
    elif not mode & 0o077:
        assert problem is None
    if problem is None:
        assert mode & 0o037 == 0


def test_kubernetes_secret_volume_modes() -> None:
    # defaultMode 0400 + fsGroup -> the kubelet writes root:fsGroup 0440: accepted for uid 10001
    assert private_mode_problem(0o100440, 0, 10001) is None
    # the same file for a root process: refused (root has no need for the group)
    assert private_mode_problem(0o100440, 0, 0)
    # defaultMode 0440 without fsGroup: root:root 0440 - accepted by the rule, unreadable by
    # uid 10001 unless it is in group 0 (the open fails first: KeyFileInaccessible)
    assert private_mode_problem(0o100440, 0, 10001) is None
    # 0444, 0460, 0640 owned by the reader
    assert private_mode_problem(0o100444, 0, 10001)
    assert private_mode_problem(0o100460, 0, 10001)
    assert private_mode_problem(0o100640, 10001, 10001)


def test_another_users_file_is_refused_whatever_its_mode() -> None:
    """A 0600 key owned by another non-root user: that user could replace it (PostgreSQL
    refuses its server key unless owned by the database user or root)."""
    assert private_mode_problem(0o100600, 1000, 0)
    assert private_mode_problem(0o100400, 20000, 10001)
    assert private_mode_problem(0o100600, 10001, 10001) is None
    assert private_mode_problem(0o100600, 0, 0) is None
