"""``umec verify``: one line per failed signature, naming the signature (its layer or bundle
digest) and the keys it was checked against (issue 14, CLI conventions). Real cosign
signatures in a real docker-registry."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.signing.sign import sign_image
from keys import generate_private_key, public_key_pem
from tests.support.cli import clean_env, umec
from tests.support.oci_images import push_image
from tests.support.registry import RunningRegistry, requires_registry
from umec.cli_errors import EXIT_FAILED


@requires_registry
def test_one_line_per_failed_signature_names_signature_and_keys(
        registry: RunningRegistry, tmp_path: Path) -> None:
    ci, other, rogue = (generate_private_key() for _ in range(3))
    (tmp_path / "ci.pub").write_bytes(public_key_pem(ci))
    (tmp_path / "other.pub").write_bytes(public_key_pem(other))
    image = f"{registry.host}/verify-failures-{uuid.uuid4().hex[:8]}/app:1.0"

    async def go() -> None:
        async with RegistryClient() as client:
            await push_image(client, image, salt=image)
            await sign_image(client, parse_reference(image), ci)
            # Two signatures no given key verifies: a legacy .sig layer and a bundle.
            await sign_image(client, parse_reference(image), rogue, bundle=True)
    asyncio.run(go())
    keys = ["--key", str(tmp_path / "ci.pub"), "--key", str(tmp_path / "other.pub")]
    code, stdout, stderr = umec(["verify", image, *keys, "--threshold", "2"],
                               clean_env(tmp_path))
    assert code == EXIT_FAILED, stdout + stderr
    failed = [line for line in (stdout + stderr).splitlines() if "signature.invalid" in line
              and "error:" not in line]
    assert len(failed) == 2, stdout + stderr
    for line in failed:
        assert re.search(r"sha256:[0-9a-f]{64}", line), line
        assert "other.pub" in line, line
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: signature.threshold: ") and "1 of 2 required keys" in error
    assert f"no valid signature by {tmp_path / 'other.pub'} " in error + " "
    assert "ci.pub" not in error
    assert not re.search("[\u2500-\u257f]", stdout + stderr)  # piped: no box drawing
