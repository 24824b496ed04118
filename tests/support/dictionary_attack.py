"""Dictionary-attack helpers for swtpm tests: power cuts, DA counters, DA-protected keys.

A power cut is SIGKILL of swtpm (no TPM2_Shutdown) and a restart on the same state directory;
swtpm's ``startup-clear`` flag then sends TPM2_Startup(CLEAR) as firmware would after power-on.
The restarted swtpm listens on new ports, so callers read ``Swtpm.tcti`` again afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT

from attest.tpm.device import DaState, Tpm
from attest.tpm.swtpm import Swtpm
from attest.tpm.templates import Kind, ak_template


def power_cut(sw: Swtpm) -> None:
    """Kill swtpm like a power loss would (SIGKILL, no TPM2_Shutdown); it stays down."""
    proc = sw._proc
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def power_cycle(sw: Swtpm) -> None:
    """A power cut, then power on again: the same TPM state, a new TPM2_Startup(CLEAR)."""
    power_cut(sw)
    sw.stop()  # reaps the dead process and forgets its ports
    sw.start()


def da_state(sw: Swtpm) -> DaState:
    with Tpm(sw.tcti) as t:
        return t.da_state()


def legacy_ak_template(kind: Kind) -> Any:
    """The agent's AK template without noDA: how AKs were made before issue 9."""
    template = ak_template(kind)
    attrs = template.publicArea.objectAttributes
    template.publicArea.objectAttributes = attrs & ~TPMA_OBJECT.NODA
    return template


def create_key(tpm: Tpm, template: Any, auth: bytes = b"") -> tuple[bytes, bytes]:
    """Create a key under the EK from ``template`` (as the agent does): (private, public)."""
    with tpm._ek() as (ek, *_), tpm._ek_policy_session() as sess:
        sensitive = None
        if auth:
            from tpm2_pytss.types import TPM2B_SENSITIVE_CREATE, TPMS_SENSITIVE_CREATE
            sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=auth))
        priv, pub, *_ = tpm._esys.create(ek, sensitive, template, session1=sess)
    return bytes(priv.marshal()), bytes(pub.marshal())


def write_legacy_ak(sw: Swtpm, state_dir: Path, kind: Kind = "ecc",
                    ek_kind: str = "ecc") -> None:
    """Put an AK made without noDA into an agent state directory (an agent from before), under
    the ``ek_kind`` EK (the agent's default is "rsa", :class:`Tpm`'s is "ecc")."""
    with Tpm(sw.tcti, ek_kind=ek_kind) as t:
        private, public = create_key(t, legacy_ak_template(kind))
    state_dir.mkdir(parents=True, exist_ok=True)
    for suffix, data in (("priv", private), ("pub", public)):
        path = state_dir / f"ak-{kind}.{suffix}"
        path.write_bytes(data)
        path.chmod(0o600)


def fail_auth(sw: Swtpm, private: bytes, public: bytes, times: int) -> None:
    """Use a DA-protected key with a wrong password ``times`` times (each one counts)."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC, TPML_PCR_SELECTION

    with Tpm(sw.tcti) as t:
        with t._ek() as (ek, *_), t._ek_policy_session() as sess:
            handle = t._esys.load(ek, TPM2B_PRIVATE.unmarshal(private)[0],
                                  TPM2B_PUBLIC.unmarshal(public)[0], session1=sess)
        try:
            t._esys.tr_set_auth(handle, b"wrong password")
            for _ in range(times):
                with contextlib.suppress(TSS2_Exception):  # TPM_RC_AUTH_FAIL: counted
                    t._esys.quote(handle, TPML_PCR_SELECTION.parse("sha256:0"), b"n",
                                  session1=ESYS_TR.PASSWORD)
        finally:
            t._esys.flush_context(handle)
