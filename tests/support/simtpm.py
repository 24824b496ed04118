"""A software TPM for benchmarks and fast service tests: byte-exact TPM 2.0 formats, no TSS.

``SimulatedTpm`` models just what attestation needs, following the TPM 2.0 commands it mimics:

- EK: RSA-2048 (or ECC P-256) under the TCG default EK template (fixedTPM, fixedParent,
  sensitiveDataOrigin, adminWithPolicy, restricted, decrypt; PolicySecret(endorsement);
  AES-128-CFB).
- AK: ECC P-256, ECDSA-SHA256, restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin|
  userWithAuth, a child of the EK (endorsement hierarchy, so clockInfo is not obfuscated).
  ``ak_restricted=False`` / ``ak_fixed_tpm=False`` build a weaker AK for negative tests.
- PCR banks sha1 and sha256, 24 PCRs each, all zero after a reset. ``extend`` is TPM2_PCR_Event
  (each bank extended with H_bank(data)); ``extend_digest`` is TPM2_PCR_Extend for one bank.
- TPM2_Quote: TPMS_ATTEST with the AK's qualified name, the nonce as extraData, clockInfo,
  the selection and H_sha256(selected PCRs in TPML order), signed with ECDSA-SHA256.
- TPM2_ActivateCredential: the inverse of ``attest.core.credential.make_credential``: recover
  the seed with the EK private key, check the outer HMAC over the AK's Name, then decrypt.
- Clock in ms, advanced by the caller (``advance_clock``) and by at least 1 ms per quote;
  ``reboot()`` (TPM Reset: resetCount+1, restartCount=0, PCRs cleared) and ``resume()``
  (TPM Resume: restartCount+1, PCRs kept).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.constant_time import bytes_eq

from attest.core.credential import IDENTITY_LABEL, aes_cfb, credential_hmac, kdfa, kdfe
from attest.core.errors import AttestationError
from attest.core.tpm_marshal import (
    HASH_ALGS,
    HASH_BY_NAME,
    MAX_DIGEST,
    MAX_ECC_KEY_BYTES,
    Reader,
    TpmAlg,
    digest,
    u16,
    u32,
)
from attest.core.tpm_public import (
    AK_ATTRIBUTES,
    EccPoint,
    ObjectAttributes,
    Scheme,
    TpmPublic,
    ek_public_from_key,
    public_from_key,
)
from attest.core.tpm_structs import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    ClockInfo,
    QuoteInfo,
    TpmsAttest,
    TpmSignature,
)

TPM_RH_ENDORSEMENT = 0x4000000B
PCR_COUNT = 24
BANKS = ("sha1", "sha256")


def qualified_name(parent_qn: bytes, name: bytes, name_alg: int = TpmAlg.SHA256) -> bytes:
    """Qualified Name (Part 1 §16): nameAlg || H(QN(parent) || Name); a hierarchy's QN is its
    handle. TPMS_ATTEST.qualifiedSigner carries the signing key's QN."""
    return u16(name_alg) + digest(name_alg, parent_qn, name)


class CredentialActivationFailed(AttestationError):
    check = "credential.activate"
    hint = "The credential was not made for this TPM's EK and AK; request a new challenge."


class SimulatedTpm:
    """A deterministic-enough software TPM; see the module docstring for what it models."""

    def __init__(
        self,
        *,
        ek_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
        ak_key: ec.EllipticCurvePrivateKey | None = None,
        ecc_ek: bool = False,
        ak_restricted: bool = True,
        ak_fixed_tpm: bool = True,
        firmware_version: int = 0x2023_0101_0000_0000,
        clock_ms: int = 1_000_000,
    ) -> None:
        if ek_key is None:
            ek_key = (ec.generate_private_key(ec.SECP256R1()) if ecc_ek
                      else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self._ek_key = ek_key
        self.ek_public: TpmPublic = ek_public_from_key(ek_key.public_key())
        self._ak_key = ak_key or ec.generate_private_key(ec.SECP256R1())
        attrs = AK_ATTRIBUTES
        if not ak_restricted:
            attrs &= ~ObjectAttributes.RESTRICTED
        if not ak_fixed_tpm:
            attrs &= ~ObjectAttributes.FIXED_TPM
        self.ak_public: TpmPublic = public_from_key(
            self._ak_key.public_key(), attributes=attrs,
            scheme=Scheme(TpmAlg.ECDSA, TpmAlg.SHA256))
        ek_qn = qualified_name(u32(TPM_RH_ENDORSEMENT), self.ek_public.name())
        self.ak_qualified_name = qualified_name(ek_qn, self.ak_public.name())
        self.firmware_version = firmware_version
        self.clock = clock_ms
        self.reset_count = 0
        self.restart_count = 0
        self.pcrs: dict[str, list[bytes]] = {}
        self._clear_pcrs()

    @property
    def ek_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        """The EK private key, to build another SimulatedTpm with the same EK quickly."""
        return self._ek_key

    # -- state -------------------------------------------------------------------------------

    def _clear_pcrs(self) -> None:
        self.pcrs = {bank: [bytes(HASH_ALGS[HASH_BY_NAME[bank]][1])] * PCR_COUNT
                     for bank in BANKS}

    @property
    def clock_info(self) -> ClockInfo:
        return ClockInfo(self.clock, self.reset_count, self.restart_count, True)

    def advance_clock(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a TPM clock only moves forward; construct tampered quotes instead")
        self.clock += ms

    def reboot(self) -> None:
        """TPM Reset (Startup(CLEAR) after Shutdown(CLEAR) or power loss)."""
        self.reset_count += 1
        self.restart_count = 0
        self.clock += 1
        self._clear_pcrs()

    def resume(self) -> None:
        """TPM Resume (Startup(STATE) after Shutdown(STATE)): PCRs survive."""
        self.restart_count += 1
        self.clock += 1

    def extend(self, pcr: int, data: bytes) -> None:
        """TPM2_PCR_Event: every bank b gets PCR = H_b(PCR || H_b(data))."""
        for bank in BANKS:
            alg = HASH_BY_NAME[bank]
            self.extend_digest(pcr, bank, digest(alg, data))

    def extend_digest(self, pcr: int, bank: str, value: bytes) -> None:
        """TPM2_PCR_Extend of one bank with an already computed digest."""
        alg = HASH_BY_NAME[bank]
        if len(value) != HASH_ALGS[alg][1] or not 0 <= pcr < PCR_COUNT:
            raise ValueError(f"bad extend of {bank}[{pcr}] with {len(value)} bytes")
        self.pcrs[bank][pcr] = digest(alg, self.pcrs[bank][pcr], value)

    # -- commands ----------------------------------------------------------------------------

    def quote(self, nonce: bytes, selection: dict[str, frozenset[int]]
              ) -> tuple[bytes, bytes, dict[str, dict[int, bytes]]]:
        """TPM2_Quote: (TPMS_ATTEST bytes, TPMT_SIGNATURE bytes, the selected PCR values)."""
        if len(nonce) > MAX_DIGEST:
            raise ValueError("qualifyingData is limited to 64 bytes")
        for bank, pcrs in selection.items():
            if bank not in self.pcrs or not all(0 <= i < PCR_COUNT for i in pcrs):
                raise ValueError(f"cannot quote {bank}:{sorted(pcrs)}; banks {BANKS}, PCRs 0-23")
        self.clock += 1
        values = {bank: {i: self.pcrs[bank][i] for i in sorted(pcrs)}
                  for bank, pcrs in selection.items()}
        pcr_digest = digest(TpmAlg.SHA256, *(v for bank in values.values()
                                              for v in bank.values()))
        attest = TpmsAttest(TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, self.ak_qualified_name,
                            nonce, self.clock_info, self.firmware_version,
                            QuoteInfo(dict(selection), pcr_digest)).marshal()
        return attest, self.sign(attest), values

    def sign(self, message: bytes) -> bytes:
        """TPMT_SIGNATURE (ECDSA-SHA256) over ``message``. A real restricted AK refuses
        messages that start with TPM_GENERATED; this one signs anything, for negative tests."""
        r, s = decode_dss_signature(self._ak_key.sign(message, ec.ECDSA(hashes.SHA256())))
        return TpmSignature(TpmAlg.ECDSA, TpmAlg.SHA256, r=r.to_bytes(32, "big"),
                            s=s.to_bytes(32, "big")).marshal()

    def activate_credential(self, blob: bytes, enc_secret: bytes) -> bytes:
        """TPM2_ActivateCredential(AK, EK): the secret, or CredentialActivationFailed."""
        name_alg = self.ek_public.name_alg
        size = HASH_ALGS[name_alg][1]
        try:
            seed = self._recover_seed(enc_secret, size)
            r = Reader(blob, "TPM2B_ID_OBJECT")
            inner = Reader(r.tpm2b("credential", len(blob)), "TPMS_ID_OBJECT")
            r.done()
            outer = inner.tpm2b("integrityHMAC", MAX_DIGEST)
            enc_identity = inner.rest()
        except (AttestationError, ValueError) as exc:
            raise CredentialActivationFailed(f"cannot unwrap credential: {exc}") from None
        ak_name = self.ak_public.name()
        hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", size * 8)
        if not bytes_eq(outer, credential_hmac(name_alg, hmac_key, enc_identity, ak_name)):
            raise CredentialActivationFailed("integrity HMAC mismatch (wrong EK or AK name)")
        assert self.ek_public.symmetric is not None
        sym_key = kdfa(name_alg, seed, b"STORAGE", ak_name, b"",
                       self.ek_public.symmetric.key_bits)
        plain = Reader(aes_cfb(sym_key, enc_identity, decrypt=True), "TPM2B_DIGEST")
        try:
            secret = plain.tpm2b("credential", size)
            plain.done()
        except AttestationError as exc:
            raise CredentialActivationFailed(f"decrypted credential malformed: {exc}") from None
        return secret

    def _recover_seed(self, enc_secret: bytes, size: int) -> bytes:
        r = Reader(enc_secret, "TPM2B_ENCRYPTED_SECRET")
        body = r.tpm2b("secret", len(enc_secret))
        r.done()
        hash_cls = HASH_ALGS[self.ek_public.name_alg][2]
        if isinstance(self._ek_key, rsa.RSAPrivateKey):
            return self._ek_key.decrypt(body, padding.OAEP(padding.MGF1(hash_cls()), hash_cls(),
                                                          IDENTITY_LABEL))
        point = Reader(body, "TPMS_ECC_POINT")
        x = point.tpm2b("x", MAX_ECC_KEY_BYTES)
        y = point.tpm2b("y", MAX_ECC_KEY_BYTES)
        point.done()
        curve = self._ek_key.curve
        eph = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                            curve).public_key()
        z = self._ek_key.exchange(ec.ECDH(), eph)
        assert isinstance(self.ek_public.unique, EccPoint)
        return kdfe(self.ek_public.name_alg, z, IDENTITY_LABEL, x, self.ek_public.unique.x,
                    size * 8)
