"""Node-side TPM adapter on tpm2-pytss (ESAPI): EK, AK, credential activation, quotes, PCRs.

What the agent does with it, per the attestation protocol (DESIGN.md):

1. **Enroll**: :meth:`Tpm.ek_certificate` reads the EK certificate from NV (0x01C00002 RSA,
   0x01C0000A ECC) in chunks of ``TPM_PT_NV_BUFFER_MAX``; :meth:`Tpm.ek_public` recreates the EK
   from the TCG default template (it is a primary key: same seed + template = same key) and returns
   its TPM2B_PUBLIC; :meth:`Tpm.load_or_create_ak` creates the AK under the EK once and keeps its
   private/public blobs in the agent's state directory, so after a restart the same AK (same Name)
   is loaded under the re-created EK and the registrar's EK↔AK binding stays valid.
2. **Activate**: :meth:`Tpm.activate_credential` runs TPM2_ActivateCredential with the AK as the
   activated object and the EK as the decryption key; the EK's policy is
   ``PolicySecret(TPM_RH_ENDORSEMENT)``, satisfied in a fresh policy session.
3. **Evidence**: :meth:`Tpm.quote` signs the nonce and a PCR selection with the AK, then reads the
   selected PCRs (PCR_Read returns at most 8 digests per call) and checks that their digest equals
   ``pcrDigest`` in the quote; a PCR extended between the two commands causes a retry, so the
   values sent always belong to the quote.

Dictionary-attack lockout: the AK is created with ``noDA`` (see templates.py), so unclean power
losses never count against it. A TPM that is in lockout anyway (an AK created before that, or
another DA-protected key used on the node) answers TPM_RC_LOCKOUT; every command here turns that
into :class:`TpmLockedOut`, which carries the TPM's DA state (:meth:`Tpm.da_state`) and says how
to recover. TPM_RC_RETRY, TPM_RC_YIELDED and TPM_RC_TESTING are not lockout: they are transient
(ESYS itself resubmits the command) and stay plain :class:`TpmCommandFailed`.

Resource hygiene: a TPM has very few transient object slots (swtpm: 3). Every transient object and
session is flushed in ``finally`` blocks, on success and on error alike, and the ESAPI context is
closed by :meth:`Tpm.close` (or the context manager), so a failing agent cannot exhaust them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HC,
    TPM2_PT,
    TPM2_PT_NV,
    TPM2_RC,
    TPM2_SE,
    TPMA_NV,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPMS_ATTEST,
    TPMS_NV_PUBLIC,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from attest.core.errors import AttestationError, MalformedStructure
from attest.tpm.selection import bank_alg, selected, selection_of
from attest.tpm.templates import EK_CERT_INDEX, EK_TYPES, Kind, ak_template, check_kind

DEFAULT_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
T = TypeVar("T")


class TpmUnavailable(AttestationError):
    """The TPM (or its TCTI) could not be opened."""

    check = "tpm.unavailable"
    hint = ("Check UMEC_TPM_TCTI (device:/dev/tpmrm0 on a node), that the device exists and the "
            "agent may open it (tss group), or that swtpm is running on the given port.")


class TpmCommandFailed(AttestationError):
    """A TPM command returned an error code."""

    check = "tpm.command"
    hint = ("Decode the TPM RC (tpm2_rc_decode); if it is TPM_RC_OBJECT_MEMORY restart the agent; "
            "if it persists, the TPM may need a reset or a clear by the operator.")

    def __init__(self, command: str, rc: int, message: str = "") -> None:
        super().__init__(f"{command} failed with TPM RC 0x{rc:x} {message}".rstrip())
        self.command = command
        self.rc = rc


# TPM RCs come from the TPM itself (layer 0) or, through tpm2-abrmd, the resource manager's TPM
# layer (11 << 16); a lockout reported by any other layer is not the TPM's.
_TPM_LAYERS = (0, 11 << 16)


def is_lockout(rc: int) -> bool:
    """True for TPM_RC_LOCKOUT (0x921) only; RETRY, YIELDED and TESTING are transient."""
    return (rc & 0xFF0000) in _TPM_LAYERS and (rc & 0xFFFF) == int(TPM2_RC.LOCKOUT)


@dataclass(frozen=True)
class DaState:
    """The TPM's dictionary-attack state (TPM_PT_LOCKOUT_* / TPM_PT_MAX_AUTH_FAIL)."""

    counter: int  # TPM_PT_LOCKOUT_COUNTER: failures (incl. unclean shutdowns) counted now
    max_tries: int  # TPM_PT_MAX_AUTH_FAIL: lockout when counter >= max_tries
    interval: int  # TPM_PT_LOCKOUT_INTERVAL: seconds (of TPM uptime) per counter decrement
    recovery: int  # TPM_PT_LOCKOUT_RECOVERY: wait after a failed lockoutAuth

    @property
    def locked_out(self) -> bool:
        return self.interval > 0 and self.counter >= self.max_tries

    @property
    def retry_after(self) -> int:
        """Seconds of TPM uptime until one more authorisation is allowed (0: not locked)."""
        if not self.locked_out:
            return 0
        return (self.counter - self.max_tries + 1) * self.interval


class TpmLockedOut(TpmCommandFailed):
    """TPM_RC_LOCKOUT: the TPM refuses DA-protected authorisations until it recovers."""

    check = "tpm.lockout"
    hint = ("The TPM's dictionary-attack protection is in lockout, usually after repeated "
            "power-offs without TPM2_Shutdown while a DA-protected key was in use. It recovers "
            "by itself after TPM_PT_LOCKOUT_INTERVAL seconds of uptime per count above the "
            "limit (`tpm2_getcap properties-variable`), or clear it now with "
            "`tpm2_dictionarylockout --clear-lockout` (add `-p <lockout auth>` if one is set). "
            "An AK created without noDA keeps counting: see the agent's warning on how to "
            "replace it.")

    def __init__(self, command: str, rc: int, da: DaState | None) -> None:
        if da is None:
            when = "the TPM's DA state could not be read"
        else:
            when = (f"{da.counter} counted failures, limit {da.max_tries}; it recovers after "
                    f"{da.retry_after} s of TPM uptime (TPM_PT_LOCKOUT_INTERVAL "
                    f"{da.interval} s)")
        super().__init__(command, rc, "(TPM_RC_LOCKOUT): the TPM's dictionary-attack "
                         "protection is in lockout, usually after repeated power-offs without "
                         f"TPM2_Shutdown while a DA-protected key was in use ({when}); or clear "
                         "it now with `tpm2_dictionarylockout --clear-lockout`")
        self.da = da

    @property
    def retry_after(self) -> int | None:
        return self.da.retry_after if self.da is not None else None


class CredentialMalformed(MalformedStructure):
    """A credential blob or encrypted secret is not a marshalled TPM2B structure."""

    check = "tpm.credential.parse"
    hint = "The registrar's challenge is corrupt; restart enrollment to get a fresh challenge."


@dataclass(frozen=True)
class AkHandle:
    """A persisted attestation key: TPM2B_PUBLIC bytes and its Name (nameAlg || digest)."""

    kind: Kind
    public: bytes
    private: bytes
    name: bytes

    @property
    def no_da(self) -> bool:
        """True when the AK is exempt from dictionary-attack protection (TPMA_OBJECT.NODA)."""
        pub, _ = TPM2B_PUBLIC.unmarshal(self.public)
        return bool(pub.publicArea.objectAttributes & TPMA_OBJECT.NODA)


@dataclass(frozen=True)
class Quote:
    attest: bytes  # TPMS_ATTEST, marshalled
    signature: bytes  # TPMT_SIGNATURE, marshalled
    pcr_values: dict[str, dict[int, bytes]]


class Tpm:
    """An open TPM. ``ek_kind`` picks the EK used as AK parent and for credential activation."""

    def __init__(self, tcti: str, *, ek_kind: str = "ecc") -> None:
        if tcti.split(":", 1)[0] not in ("device", "swtpm", "mssim"):
            raise TpmUnavailable(f"unsupported TCTI {tcti!r} (use device:, swtpm: or mssim:)")
        self.tcti = tcti
        self.ek_kind: Kind = check_kind(ek_kind)
        self._ak: AkHandle | None = None
        try:
            self._ctx: Any = ESAPI(tcti)
        except (TSS2_Exception, RuntimeError, OSError) as exc:
            raise TpmUnavailable(f"cannot open TPM via {tcti!r}: {exc}") from exc

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _esys(self) -> Any:
        """The ESAPI context; TpmUnavailable once closed (rather than an AttributeError)."""
        if self._ctx is None:
            raise TpmUnavailable("the TPM context is closed")
        return self._ctx

    def _call(self, command: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except TSS2_Exception as exc:
            rc = int(exc.rc)
            if is_lockout(rc):
                raise TpmLockedOut(command, rc, self._da_state_or_none()) from exc
            raise TpmCommandFailed(command, rc, str(exc)) from exc

    def da_state(self) -> DaState:
        """The dictionary-attack counters (GetCapability needs no authorisation: it works in
        lockout too)."""
        first = int(TPM2_PT.LOCKOUT_COUNTER)
        _, data = self._call("GetCapability(TPM_PROPERTIES)", self._esys.get_capability,
                             TPM2_CAP.TPM_PROPERTIES, first, 4)
        props = {int(p.property): int(p.value) for p in data.data.tpmProperties}
        return DaState(counter=props.get(first, 0),
                       max_tries=props.get(int(TPM2_PT.MAX_AUTH_FAIL), 0),
                       interval=props.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0),
                       recovery=props.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0))

    def _da_state_or_none(self) -> DaState | None:
        try:
            return self.da_state()
        except (TpmCommandFailed, TpmUnavailable):
            return None

    def _flush(self, handle: Any) -> None:
        # Best effort: a flush failing must not hide the original error, and a session the
        # TPM already closed (continueSession clear) reports TPM_RC_HANDLE here.
        if handle is not None and self._ctx is not None:
            with contextlib.suppress(TSS2_Exception):
                self._ctx.flush_context(handle)

    @contextlib.contextmanager
    def _transient(self, command: str, fn: Callable[..., Any], *args: Any,
                   **kwargs: Any) -> Iterator[Any]:
        """Create a transient object/session and flush it when the block ends, whatever happens."""
        result = self._call(command, fn, *args, **kwargs)
        handle = result[0] if isinstance(result, tuple) else result
        try:
            yield result
        finally:
            self._flush(handle)

    def _ek_policy_session(self) -> contextlib.AbstractContextManager[Any]:
        """A policy session satisfying the EK authPolicy: PolicySecret(TPM_RH_ENDORSEMENT)."""
        @contextlib.contextmanager
        def session() -> Iterator[Any]:
            with self._transient("StartAuthSession", self._esys.start_auth_session,
                                 ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                 TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256) as s:
                self._call("PolicySecret", self._esys.policy_secret, ESYS_TR.ENDORSEMENT, s)
                yield s
        return session()

    def _ek(self, kind: Kind | None = None) -> contextlib.AbstractContextManager[Any]:
        """The EK as a transient primary key (create_ek_template honours vendor NV templates)."""
        k = kind or self.ek_kind
        try:
            _, template = create_ek_template(EK_TYPES[k], self._nv_reader())
        except TSS2_Exception as exc:
            raise TpmCommandFailed("NV_Read(EK template)", int(exc.rc), str(exc)) from exc
        return self._transient("CreatePrimary(EK)", self._esys.create_primary, None, template,
                               ESYS_TR.ENDORSEMENT)

    def _defined_nv_indices(self) -> set[int]:
        found: set[int] = set()
        more, start = True, int(TPM2_HC.NV_INDEX_FIRST)
        while more:
            more, data = self._call("GetCapability(HANDLES)", self._esys.get_capability,
                                    TPM2_CAP.HANDLES, start, 64)
            handles = [int(h) for h in data.data.handles]
            found.update(handles)
            if not handles:
                break
            start = max(handles) + 1
        return found

    def _nv_reader(self) -> Callable[[int], bytes]:
        """NV read callback that checks the index list first, so reading an index the TPM does
        not have never reaches the TPM (and TSS never logs a spurious error for it)."""
        defined = self._defined_nv_indices()
        reader = NVReadEK(self._esys)

        def read(index: int) -> bytes:
            if int(index) not in defined:
                raise NoSuchIndex(index)
            return bytes(reader(index))
        return read

    # --- EK -------------------------------------------------------------------------------

    def ek_certificate(self, kind: str) -> bytes | None:
        """The EK certificate stored by the manufacturer in NV, or None when there is none."""
        index = EK_CERT_INDEX[check_kind(kind)]
        try:
            return self._nv_reader()(index)  # the whole index, BUFFER_MAX bytes per NV_Read
        except NoSuchIndex:
            return None
        except TSS2_Exception as exc:
            raise TpmCommandFailed(f"NV_Read(0x{index:08x})", int(exc.rc), str(exc)) from exc

    def ek_public(self, kind: str) -> bytes:
        """The EK's TPM2B_PUBLIC (marshalled), recreated from the default template."""
        with self._ek(check_kind(kind)) as (_handle, public, *_):
            return bytes(public.marshal())

    def ek_public_key(self, kind: str) -> PublicKeyTypes:
        pub, _ = TPM2B_PUBLIC.unmarshal(self.ek_public(kind))
        return load_pem_public_key(pub.to_pem())

    # --- AK -------------------------------------------------------------------------------

    def load_or_create_ak(self, state_dir: Path, kind: str = "ecc") -> AkHandle:
        """Load the AK persisted in ``state_dir`` or create (and persist) a new one under the EK."""
        k = check_kind(kind)
        priv_path = Path(state_dir) / f"ak-{k}.priv"
        pub_path = Path(state_dir) / f"ak-{k}.pub"
        if priv_path.exists() and pub_path.exists():
            private, public = priv_path.read_bytes(), pub_path.read_bytes()
            with self._loaded_ak(private, public) as handle:  # proves it loads under this EK
                name = bytes(self._call("TR_GetName", self._esys.tr_get_name, handle).name)
        else:
            with self._ek() as (ek, *_), self._ek_policy_session() as sess:
                priv, pub, *_ = self._call("Create(AK)", self._esys.create, ek, None,
                                           ak_template(k), session1=sess)
            private, public = bytes(priv.marshal()), bytes(pub.marshal())
            name = bytes(pub.get_name().name)
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            for path, data in ((priv_path, private), (pub_path, public)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(path, 0o600)
        self._ak = AkHandle(kind=k, public=public, private=private, name=name)
        return self._ak

    @contextlib.contextmanager
    def _loaded_ak(self, private: bytes | None = None,
                   public: bytes | None = None) -> Iterator[Any]:
        if private is None or public is None:
            if self._ak is None:
                raise TpmUnavailable("no AK loaded: call load_or_create_ak first")
            private, public = self._ak.private, self._ak.public
        try:
            priv, _ = TPM2B_PRIVATE.unmarshal(private)
            pub, _ = TPM2B_PUBLIC.unmarshal(public)
        except Exception as exc:  # tpm2-pytss raises assorted errors on short input
            raise MalformedStructure(f"stored AK blobs are corrupt: {exc}") from exc
        # Load under the EK, then flush the EK at once: only the AK is needed to sign.
        with self._ek() as (ek, *_), self._ek_policy_session() as sess:
            handle = self._call("Load(AK)", self._esys.load, ek, priv, pub, session1=sess)
        try:
            yield handle
        finally:
            self._flush(handle)

    # --- activation -----------------------------------------------------------------------

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """Recover the registrar's secret (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET marshalled)."""
        blob = _unmarshal_exact(TPM2B_ID_OBJECT, credential_blob, "credential blob")
        secret = _unmarshal_exact(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
        with self._loaded_ak() as ak, self._ek() as (ek, *_), \
                self._ek_policy_session() as sess:
            cert_info = self._call("ActivateCredential", self._esys.activate_credential, ak, ek,
                                   blob, secret, session1=ESYS_TR.PASSWORD, session2=sess)
        return bytes(cert_info.buffer)

    # --- quotes and PCRs ------------------------------------------------------------------

    def quote(self, nonce: bytes, selection: dict[str, list[int]]) -> Quote:
        """Quote ``selection`` over ``nonce`` with the AK; PCR values provably match the quote."""
        sel = selection_of(selection)
        for _attempt in range(5):
            with self._loaded_ak() as ak:
                attest_b, sig = self._call("Quote", self._esys.quote, ak, sel, nonce)
            attest = bytes(attest_b.buffer) if hasattr(attest_b, "buffer") else bytes(attest_b)
            parsed, _ = TPMS_ATTEST.unmarshal(attest)
            info = parsed.attested.quote
            values = self.pcr_readselection_of(info.pcrSelect)
            h = hashlib.sha256()
            for bank, indices in selected(info.pcrSelect):
                for i in indices:
                    h.update(values[bank][i])
            if h.digest() == bytes(info.pcrDigest):
                return Quote(attest=attest, signature=bytes(sig.marshal()), pcr_values=values)
            # A PCR was extended between Quote and PCR_Read: quote again.
        raise TpmCommandFailed("Quote", 0, "PCR values kept changing during the quote")

    def pcr_read(self, selection: dict[str, list[int]]) -> dict[str, dict[int, bytes]]:
        return self.pcr_readselection_of(selection_of(selection))

    def pcr_readselection_of(self, sel: Any) -> dict[str, dict[int, bytes]]:
        # PCR_Read returns at most 8 digests (TPML_DIGEST) per call, so read in chunks of 8.
        out: dict[str, dict[int, bytes]] = {}
        for bank, indices in selected(sel):
            out[bank] = {}
            for start in range(0, len(indices), 8):
                chunk = indices[start:start + 8]
                _, got_sel, digests = self._call("PCR_Read", self._esys.pcr_read,
                                                 selection_of({bank: chunk}))
                got = [i for _, idx in selected(got_sel) for i in idx]
                if got != chunk or len(digests) != len(chunk):
                    raise TpmCommandFailed("PCR_Read", 0,
                                           f"bank {bank} PCRs {chunk} not all readable "
                                           f"(got {got}); is the bank active?")
                for i, d in zip(chunk, digests, strict=True):
                    out[bank][i] = bytes(d)
        return out

    def active_banks(self) -> list[str]:
        _, data = self._call("GetCapability(PCRS)", self._esys.get_capability,
                             TPM2_CAP.PCRS, 0, 16)
        return [bank for bank, idx in selected(data.data.assignedPCR) if idx]

    def pcr_extend(self, index: int, data: bytes | dict[str, bytes]) -> None:
        """Extend PCR ``index``: with bytes, H_bank(data) into every active bank (like
        TPM2_PCR_Event); with ``{bank: digest}``, exactly those digests."""
        if not 0 <= index < 24:
            raise ValueError(f"PCR index {index} out of range 0..23")
        if isinstance(data, bytes | bytearray):
            digests = {b: hashlib.new(b, data).digest() for b in self.active_banks()}
        else:
            digests = dict(data)
        values = TPML_DIGEST_VALUES([TPMT_HA(hashAlg=bank_alg(b), digest=TPMU_HA(**{b: d}))
                                     for b, d in digests.items()])
        handle = getattr(ESYS_TR, f"PCR{index}")
        self._call("PCR_Extend", self._esys.pcr_extend, handle, values)

    # --- manufacturing helper (swtpm only) --------------------------------------------------

    def write_platform_nv(self, index: int, data: bytes) -> None:
        """Define an NV index with platform auth and write ``data`` (EK cert provisioning).

        Attributes follow what swtpm_setup uses for EK certificates: platform-created, readable
        with owner or empty index auth, writable by the platform only, no dictionary-attack lockout.
        """
        attrs = (TPMA_NV.PLATFORMCREATE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.PPREAD
                 | TPMA_NV.PPWRITE | TPMA_NV.NO_DA | TPMA_NV.WRITEDEFINE)
        pub = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=len(data)))
        nv = self._call("NV_DefineSpace", self._esys.nv_define_space, None, pub,
                        auth_handle=ESYS_TR.PLATFORM)
        try:
            chunk = self._nv_buffer_max()
            for off in range(0, len(data), chunk):
                self._call("NV_Write", self._esys.nv_write, nv, data[off:off + chunk], off,
                           auth_handle=ESYS_TR.PLATFORM)
        finally:
            with contextlib.suppress(TSS2_Exception):
                self._esys.tr_close(nv)

    def _nv_buffer_max(self) -> int:
        _, data = self._call("GetCapability", self._esys.get_capability,
                             TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
        for p in data.data.tpmProperties:
            if p.property == TPM2_PT_NV.BUFFER_MAX:
                return int(p.value)
        return 512

    # --- event log ------------------------------------------------------------------------

    @staticmethod
    def read_event_log(path: Path = DEFAULT_EVENT_LOG) -> bytes | None:
        """The firmware's TCG2 event log, or None where there is none (e.g. a Raspberry Pi)."""
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            raise TpmUnavailable(f"cannot read the event log {path}: {exc}") from exc


def _unmarshal_exact(cls: Any, data: bytes, what: str) -> Any:
    try:
        obj, used = cls.unmarshal(bytes(data))
    except Exception as exc:  # tpm2-pytss raises TSS2_Exception/ValueError on bad input
        raise CredentialMalformed(f"{what} is not a {cls.__name__}: {exc}") from exc
    if used != len(data):
        raise CredentialMalformed(f"{what}: {len(data) - used} trailing bytes after "
                                  f"{cls.__name__}")
    return obj
