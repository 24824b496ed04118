"""Reading a private key through keys.storage (the real files, the real open): a key owned by
another non-root user is refused when the reader is root (issue 12 review F11: that user could
replace the key a root process signs with), and a FIFO in the key's place is refused at once
with a typed error instead of blocking the open until a writer appears."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keys import KeysError
from keys.errors import KeyFileInsecure, KeyFileMalformed
from keys.storage import load_private_key, save_private_key

OTHER_UID = 10001

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root "
                                "(the rule is covered by test_key_file_modes without it)")


@needs_root
def test_root_refuses_a_key_owned_by_another_user(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    save_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    assert load_private_key(path)                    # root's own 0600 file: accepted
    os.chown(path, OTHER_UID, OTHER_UID)             # still 0600, now uid 10001's
    with pytest.raises(KeyFileInsecure) as err:
        load_private_key(path)
    assert err.value.check == "keys.file.insecure"
    assert f"uid {OTHER_UID}" in err.value.detail and "chown" in err.value.hint
    os.chown(path, 0, 0)                             # root-owned again: accepted
    assert load_private_key(path)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    os.mkfifo(path, 0o600)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_private_key(path)
            outcome.append(None)
        except KeysError as exc:
            outcome.append(exc)
    started = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    try:
        assert not thread.is_alive(), "opening the FIFO blocked"
        assert time.monotonic() - started < 5
        assert isinstance(outcome[0], KeyFileMalformed)
        assert outcome[0].check == "keys.file.malformed" and "regular" in outcome[0].detail
    finally:
        if thread.is_alive():   # release a blocked open: a writer appears
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5)
