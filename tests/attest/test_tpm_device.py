"""The tpm2-pytss adapter against a real swtpm: AK persistence, quotes checked by tpm2_checkquote,
PCRs, credential activation (tpm2_makecredential and our make_credential), flush discipline."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss.constants import TPM2_CAP, TPM2_HC, TPM2_HR, TPMA_OBJECT
from tpm2_pytss.utils import tools_to_credential

from attest.core.credential import make_credential
from attest.core.identity import check_ak_attributes
from attest.core.tpm_public import parse_tpm2b_public
from attest.core.tpm_structs import parse_tpms_attest, parse_tpmt_signature, verify_signature
from attest.tpm.device import (
    CredentialMalformed,
    DaState,
    Tpm,
    TpmCommandFailed,
    TpmLockedOut,
    TpmUnavailable,
    is_lockout,
)
from attest.tpm.swtpm import Swtpm
from attest.tpm.templates import ak_template, check_kind
from tests.support.dictionary_attack import (
    create_key,
    da_state,
    fail_auth,
    legacy_ak_template,
    write_legacy_ak,
)
from tests.support.swtpm import needs_swtpm, needs_tpm2_tools

pytestmark = needs_swtpm
# tpm2_checkquote 5.4 mis-reads a PCR "values" file of more than 7 digests ("Something wrong,
# trying to print but nothing more"), so the oracle gets 7; larger selections are checked below.
SEL = {"sha256": [0, 1, 7, 14, 16], "sha1": [0, 16]}


@pytest.fixture
def tpm(swtpm_node: Swtpm) -> Iterator[Tpm]:
    with Tpm(swtpm_node.tcti) as t:
        yield t
    _assert_no_leaks(swtpm_node)


def _handles(t: Tpm, first: int) -> list[int]:
    _, data = t._ctx.get_capability(TPM2_CAP.HANDLES, first, 64)
    return [int(h) for h in data.data.handles]


def _assert_no_leaks(sw: Swtpm) -> None:
    with Tpm(sw.tcti) as t:
        assert _handles(t, int(TPM2_HC.TRANSIENT_FIRST)) == []
        assert _handles(t, int(TPM2_HR.HMAC_SESSION)) == []  # loaded sessions
        assert _handles(t, int(TPM2_HR.POLICY_SESSION)) == []


def _tools_credential(tmp: Path, ek_public: bytes, name: bytes, secret: bytes) -> tuple[bytes,
                                                                                        bytes]:
    (tmp / "ek.pub").write_bytes(ek_public)
    (tmp / "secret").write_bytes(secret)
    subprocess.run(["tpm2_makecredential", "--tcti", "none", "-u", str(tmp / "ek.pub"),
                    "-s", str(tmp / "secret"), "-n", name.hex(), "-o", str(tmp / "cred")],
                   check=True, capture_output=True)
    blob, enc = tools_to_credential((tmp / "cred").read_bytes())
    return bytes(blob.marshal()), bytes(enc.marshal())


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_ak_persists_across_instances(swtpm_node: Swtpm, tmp_path: Path, kind: str) -> None:
    with Tpm(swtpm_node.tcti) as t1:
        ak1 = t1.load_or_create_ak(tmp_path, kind)
    for f in tmp_path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    with Tpm(swtpm_node.tcti) as t2:  # a restarted agent
        ak2 = t2.load_or_create_ak(tmp_path, kind)
        other = t2.load_or_create_ak(tmp_path / "other", kind)
    assert ak2.name == ak1.name and ak2.public == ak1.public
    assert other.name != ak1.name
    pub = parse_tpm2b_public(ak1.public)
    check_ak_attributes(pub)  # restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin
    assert pub.name() == ak1.name  # our pure parser agrees with the TPM's Name
    _assert_no_leaks(swtpm_node)


def test_corrupt_ak_blob_is_a_typed_error(swtpm_node: Swtpm, tmp_path: Path) -> None:
    with Tpm(swtpm_node.tcti) as t:
        t.load_or_create_ak(tmp_path, "ecc")
    (tmp_path / "ak-ecc.priv").write_bytes(b"\x00\x04abcd")
    with Tpm(swtpm_node.tcti) as t, pytest.raises(TpmCommandFailed, match="Load"):
        t.load_or_create_ak(tmp_path, "ecc")
    _assert_no_leaks(swtpm_node)


@needs_tpm2_tools
@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_quote_checked_by_tpm2_checkquote(tpm: Tpm, tmp_path: Path, kind: str) -> None:
    ak = tpm.load_or_create_ak(tmp_path / "agent", kind)
    nonce = os.urandom(20)
    tpm.pcr_extend(16, f"quote-{kind}".encode())
    q = tpm.quote(nonce, SEL)
    assert sorted(q.pcr_values) == ["sha1", "sha256"]
    assert sorted(q.pcr_values["sha256"]) == SEL["sha256"]
    order = "sha256:" + ",".join(map(str, SEL["sha256"])) + "+sha1:0,16"
    assert len(q.pcr_values["sha256"]) + len(q.pcr_values["sha1"]) == 7
    values = (b"".join(q.pcr_values["sha256"][i] for i in SEL["sha256"])
              + q.pcr_values["sha1"][0] + q.pcr_values["sha1"][16])
    files = {"ak.pub": ak.public, "msg": q.attest, "sig": q.signature, "pcrs": values}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def checkquote(qualification: bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tpm2_checkquote", "-u", str(tmp_path / "ak.pub"), "-m", str(tmp_path / "msg"),
             "-s", str(tmp_path / "sig"), "-f", str(tmp_path / "pcrs"), "-l", order,
             "-g", "sha256", "-q", qualification.hex()], capture_output=True, text=True)

    assert checkquote(nonce).returncode == 0, checkquote(nonce).stderr
    assert checkquote(os.urandom(20)).returncode != 0  # the oracle does check the nonce
    (tmp_path / "pcrs").write_bytes(bytes([values[0] ^ 1]) + values[1:])
    assert checkquote(nonce).returncode != 0  # ... and the PCR values
    # Our pure verifier agrees.
    attest = parse_tpms_attest(q.attest)
    assert attest.extra_data == nonce
    verify_signature(parse_tpm2b_public(ak.public), parse_tpmt_signature(q.signature), q.attest)


def test_large_quote_pcr_values_match_the_digest(tpm: Tpm, tmp_path: Path) -> None:
    ak = tpm.load_or_create_ak(tmp_path, "ecc")
    tpm.pcr_extend(23, b"large")
    sel = {"sha1": [0, 23], "sha256": list(range(24))}  # 26 PCRs: several PCR_Read chunks
    q = tpm.quote(b"\x07" * 32, sel)
    quote = parse_tpms_attest(q.attest).quote
    assert quote is not None
    assert list(quote.pcr_select) == ["sha1", "sha256"]  # TPML order, as requested
    h = hashlib.sha256()
    for bank in ("sha1", "sha256"):
        for i in sorted(quote.pcr_select[bank]):
            h.update(q.pcr_values[bank][i])
    assert h.digest() == quote.pcr_digest
    assert q.pcr_values["sha256"][23] != bytes(32)
    verify_signature(parse_tpm2b_public(ak.public), parse_tpmt_signature(q.signature), q.attest)


def test_pcr_extend_and_read(tpm: Tpm) -> None:
    before = tpm.pcr_read({"sha256": [16], "sha1": [16]})
    tpm.pcr_extend(16, b"k3s v1.31")
    after = tpm.pcr_read({"sha256": [16], "sha1": [16]})
    for bank in ("sha256", "sha1"):
        want = hashlib.new(bank, before[bank][16] + hashlib.new(bank, b"k3s v1.31").digest())
        assert after[bank][16] == want.digest()
    digest = hashlib.sha256(b"explicit").digest()
    tpm.pcr_extend(16, {"sha256": digest})
    again = tpm.pcr_read({"sha256": [16], "sha1": [16]})
    assert again["sha256"][16] == hashlib.sha256(after["sha256"][16] + digest).digest()
    assert again["sha1"][16] == after["sha1"][16]  # only the given bank moved
    # More than 8 PCRs at once: read in chunks, same values as one-by-one reads.
    everything = tpm.pcr_read({"sha256": list(range(24))})["sha256"]
    assert sorted(everything) == list(range(24))
    for i in (0, 7, 8, 15, 16, 23):
        assert everything[i] == tpm.pcr_read({"sha256": [i]})["sha256"][i]
    with pytest.raises(ValueError):
        tpm.pcr_read({"sha256": [24]})
    with pytest.raises(ValueError):
        tpm.pcr_read({"md5": [0]})
    with pytest.raises(ValueError):
        tpm.pcr_extend(24, b"x")


def test_inactive_bank_is_a_typed_error(tpm: Tpm) -> None:
    assert sorted(tpm.active_banks()) == ["sha1", "sha256"]
    with pytest.raises(TpmCommandFailed, match="sha384"):
        tpm.pcr_read({"sha384": [0]})


@needs_tpm2_tools
@pytest.mark.parametrize("ek_kind", ["ecc", "rsa"])
def test_activate_credential_tools_and_ours(swtpm_node: Swtpm, tmp_path: Path,
                                            ek_kind: str) -> None:
    with Tpm(swtpm_node.tcti, ek_kind=ek_kind) as t:
        ak = t.load_or_create_ak(tmp_path / "agent", "ecc")
        ek_public = t.ek_public(ek_kind)
        secret = os.urandom(32)
        blob, enc = _tools_credential(tmp_path, ek_public, ak.name, secret)
        assert t.activate_credential(blob, enc) == secret
        blob, enc = make_credential(parse_tpm2b_public(ek_public), ak.name, secret)
        assert t.activate_credential(blob, enc) == secret
        # Bound to another AK's Name: the TPM refuses, and says which command failed.
        other = t.load_or_create_ak(tmp_path / "other", "ecc")
        blob, enc = make_credential(parse_tpm2b_public(ek_public), other.name, secret)
        t.load_or_create_ak(tmp_path / "agent", "ecc")
        with pytest.raises(TpmCommandFailed, match="ActivateCredential") as err:
            t.activate_credential(blob, enc)
        assert err.value.rc != 0 and err.value.as_dict()["hint"]
    _assert_no_leaks(swtpm_node)


def test_malformed_credential_inputs(tpm: Tpm, tmp_path: Path) -> None:
    tpm.load_or_create_ak(tmp_path, "ecc")
    for blob, enc in [(b"", b"\x00\x01x"), (b"\x00\x10short", b"\x00\x01x"),
                      (b"\x00\x01x" + b"trailing", b"\x00\x01x"), (b"\x00\x01x", b"\xff")]:
        with pytest.raises(CredentialMalformed):
            tpm.activate_credential(blob, enc)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300), enc=st.binary(max_size=300))
def test_fuzz_activate_inputs_raise_only_typed_errors(swtpm_node: Swtpm, tmp_path: Path,
                                                      blob: bytes, enc: bytes) -> None:
    with Tpm(swtpm_node.tcti) as t:
        t.load_or_create_ak(tmp_path, "ecc")
        with pytest.raises((CredentialMalformed, TpmCommandFailed)):
            t.activate_credential(blob, enc)


def test_unavailable_tpm(swtpm_node: Swtpm, tmp_path: Path) -> None:
    with pytest.raises(TpmUnavailable, match="unsupported TCTI"):
        Tpm("bogus:whatever")
    with pytest.raises(TpmUnavailable, match="port=1"):
        Tpm("swtpm:host=127.0.0.1,port=1")
    t = Tpm(swtpm_node.tcti)
    t.load_or_create_ak(tmp_path, "ecc")
    t.close()
    t.close()  # idempotent
    with pytest.raises(TpmUnavailable, match="closed"):
        t.quote(b"n" * 16, {"sha256": [0]})
    with pytest.raises(TpmUnavailable, match="closed"):
        t.ek_certificate("rsa")


def test_event_log(tmp_path: Path) -> None:
    assert Tpm.read_event_log(tmp_path / "missing") is None
    (tmp_path / "log").write_bytes(b"\x01\x02")
    assert Tpm.read_event_log(tmp_path / "log") == b"\x01\x02"


def test_no_ak_yet_is_a_typed_error(tpm: Tpm) -> None:
    with pytest.raises(TpmUnavailable, match="load_or_create_ak"):
        tpm.quote(b"n" * 16, {"sha256": [0]})


def test_twenty_cycles_with_failures_do_not_leak(swtpm_node: Swtpm, tmp_path: Path) -> None:
    """swtpm has 3 transient object slots: one leaked object per failing cycle would make the
    later cycles fail with TPM_RC_OBJECT_MEMORY."""
    with Tpm(swtpm_node.tcti) as t:
        ak = t.load_or_create_ak(tmp_path, "ecc")
        ek = parse_tpm2b_public(t.ek_public("ecc"))
    failures = 0
    for cycle in range(20):
        t = Tpm(swtpm_node.tcti)
        try:
            t.load_or_create_ak(tmp_path, "ecc")
            nonce = os.urandom(16)
            q = t.quote(nonce, {"sha256": [0, 16]})
            assert parse_tpms_attest(q.attest).extra_data == nonce
            secret = os.urandom(32)
            blob, enc = make_credential(ek, ak.name, secret)
            if cycle % 3 == 0:  # a credential the TPM rejects mid-command (AK+EK+session loaded)
                blob = blob[:-1] + bytes([blob[-1] ^ 0xFF])
            if cycle % 5 == 0:  # the agent crashes while it holds the TPM
                raise RuntimeError("agent crashed")
            assert t.activate_credential(blob, enc) == secret
        except (TpmCommandFailed, RuntimeError):
            failures += 1
        finally:
            t.close()
    assert failures == 7 + 3 - 1  # cycles 0,3,6,9,12,15,18 and 5,10 (15 counted once)
    _assert_no_leaks(swtpm_node)
    with Tpm(swtpm_node.tcti) as t:
        t.load_or_create_ak(tmp_path, "ecc")
        secret = os.urandom(32)
        assert t.activate_credential(*make_credential(ek, ak.name, secret)) == secret
        t.quote(os.urandom(16), {"sha256": list(range(24))})


# --- dictionary-attack protection (issue 9 point 6) ------------------------------------------


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_ak_is_exempt_from_dictionary_attack_lockout(swtpm_node: Swtpm, tmp_path: Path,
                                                     kind: str) -> None:
    """The AK's authValue is empty: noDA, so power cuts after a quote never count (templates.py)."""
    assert ak_template(check_kind(kind)).publicArea.objectAttributes & TPMA_OBJECT.NODA
    with Tpm(swtpm_node.tcti) as t:
        ak = t.load_or_create_ak(tmp_path, kind)
    assert ak.no_da
    assert parse_tpm2b_public(ak.public).name() == ak.name
    # An AK made by an agent from before (no noDA) is recognised as such.
    write_legacy_ak(swtpm_node, tmp_path / "legacy", check_kind(kind))
    with Tpm(swtpm_node.tcti) as t:
        assert not t.load_or_create_ak(tmp_path / "legacy", kind).no_da
    _assert_no_leaks(swtpm_node)


@pytest.mark.parametrize(("rc", "lockout"), [
    (0x921, True),  # TPM_RC_LOCKOUT
    (0xB0921, True),  # TPM_RC_LOCKOUT relayed by tpm2-abrmd's TPM layer
    (0x922, False),  # TPM_RC_RETRY: transient
    (0x908, False),  # TPM_RC_YIELDED
    (0x90A, False),  # TPM_RC_TESTING
    (0x98E, False),  # TPM_RC_AUTH_FAIL (session 1): counted, but not yet lockout
    (0x70921, False),  # another TSS layer's code that happens to end in 0x921
])
def test_only_tpm_rc_lockout_is_lockout(rc: int, lockout: bool) -> None:
    assert is_lockout(rc) is lockout


def test_lockout_is_a_typed_error_and_the_ak_still_quotes(
        swtpm_factory: Callable[[str], Swtpm], tmp_path: Path) -> None:
    sw = swtpm_factory("da-lockout")  # a private TPM: this test locks it out
    with Tpm(sw.tcti) as t:
        assert t.da_state() == DaState(counter=0, max_tries=3, interval=1000, recovery=1000)
        assert not t.da_state().locked_out
        ak = t.load_or_create_ak(tmp_path / "agent", "ecc")
        guarded = create_key(t, legacy_ak_template("ecc"), auth=b"right password")
    fail_auth(sw, *guarded, times=3)
    da = da_state(sw)
    assert da.counter == 3 and da.locked_out and da.retry_after == 1000
    write_legacy_ak(sw, tmp_path / "legacy")
    with Tpm(sw.tcti) as t:
        t.load_or_create_ak(tmp_path / "legacy", "ecc")  # Load needs only the EK's policy
        with pytest.raises(TpmLockedOut) as err:
            t.quote(os.urandom(16), {"sha256": [0]})
        # ... and the agent's noDA AK is not affected by the lockout at all.
        assert t.load_or_create_ak(tmp_path / "agent", "ecc").name == ak.name
        t.quote(os.urandom(16), {"sha256": [0]})
    exc = err.value
    assert isinstance(exc, TpmCommandFailed) and exc.rc == 0x921 and exc.command == "Quote"
    assert exc.check == "tpm.lockout" and exc.retry_after == 1000 and exc.da == da
    text = str(exc)
    assert "\n" not in text
    for words in ("TPM_RC_LOCKOUT", "dictionary-attack", "3 counted failures, limit 3",
                  "1000 s", "tpm2_dictionarylockout --clear-lockout"):
        assert words in text, words
    assert "TPM_PT_LOCKOUT_INTERVAL" in exc.hint and "noDA" in exc.hint
    # The hint's way out works: clear the lockout (empty lockout auth on swtpm).
    subprocess.run(["tpm2_dictionarylockout", "--tcti", sw.tcti, "--clear-lockout"],
                   check=True, capture_output=True)
    assert da_state(sw).counter == 0
    with Tpm(sw.tcti) as t:
        t.load_or_create_ak(tmp_path / "legacy", "ecc")
        t.quote(os.urandom(16), {"sha256": [0]})
    _assert_no_leaks(sw)
