"""The AK attribute rules at enrolment, each one broken on purpose (issue 9, point 9).

An AK must be fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign, and must not be a
decryption key. Each test clears one required bit (or sets decrypt) on a genuine AK — a simulated
TPM's, an RSA one built the same way, and a real swtpm's — and expects the refusal named
``enroll.ak_attributes`` with a detail that names the offending attribute, both from the pure
check and over HTTP against a running server (where the node must not be created).

The attribute table is written out here on purpose, not taken from ``attest.core.identity``: a
test that iterated over ``_REQUIRED`` would shrink together with it and could not catch a
dropped entry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from attest.core.identity import AkAttributesInvalid, check_ak_attributes
from attest.core.tpm_marshal import TpmAlg
from attest.core.tpm_public import (
    AK_ATTRIBUTES,
    ObjectAttributes,
    Scheme,
    TpmPublic,
    parse_tpm2b_public,
    public_from_key,
)
from attest.tpm.swtpm import Swtpm
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.simtpm import SimulatedTpm
from tests.support.swtpm import needs_swtpm
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings

REQUIRED: dict[str, ObjectAttributes] = {
    "fixedTPM": ObjectAttributes.FIXED_TPM,
    "fixedParent": ObjectAttributes.FIXED_PARENT,
    "sensitiveDataOrigin": ObjectAttributes.SENSITIVE_DATA_ORIGIN,
    "restricted": ObjectAttributes.RESTRICTED,
    "sign": ObjectAttributes.SIGN_ENCRYPT,
}
CHECK = "enroll.ak_attributes"


def with_attributes(ak: TpmPublic, *, clear: int = 0, set_: int = 0) -> TpmPublic:
    attrs = (int(ak.object_attributes) & ~clear) | set_
    return replace(ak, object_attributes=ObjectAttributes(attrs))


def rsa_ak() -> TpmPublic:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return public_from_key(key.public_key(), attributes=AK_ATTRIBUTES,
                           scheme=Scheme(TpmAlg.RSASSA, TpmAlg.SHA256))


@pytest.fixture(scope="module", params=["simtpm-ecc", "rsa"])
def genuine_ak(request: pytest.FixtureRequest) -> TpmPublic:
    return SimulatedTpm().ak_public if request.param == "simtpm-ecc" else rsa_ak()


def lacks(exc: AkAttributesInvalid) -> list[str]:
    m = re.fullmatch(r"AK lacks (.+) \(attributes 0x[0-9a-f]{8}\)", exc.detail)
    assert m, exc.detail
    return m.group(1).split(", ")


def refused(ak: TpmPublic) -> AkAttributesInvalid:
    # Through the wire format, as the registrar sees it: the altered AK must survive parsing.
    parsed = parse_tpm2b_public(ak.marshal_tpm2b())
    with pytest.raises(AkAttributesInvalid) as info:
        check_ak_attributes(parsed)
    assert info.value.check == CHECK and info.value.as_dict()["check"] == CHECK
    return info.value


# -- the pure check ------------------------------------------------------------------------------

def test_genuine_ak_passes(genuine_ak: TpmPublic) -> None:
    check_ak_attributes(genuine_ak)


@pytest.mark.parametrize("name", list(REQUIRED))
def test_each_missing_attribute_is_refused_and_named(genuine_ak: TpmPublic, name: str) -> None:
    exc = refused(with_attributes(genuine_ak, clear=REQUIRED[name]))
    assert lacks(exc) == [name]


def test_all_missing_attributes_are_named(genuine_ak: TpmPublic) -> None:
    everything = sum(REQUIRED.values())
    exc = refused(with_attributes(genuine_ak, clear=everything))
    assert lacks(exc) == list(REQUIRED)


def test_decrypt_is_refused(genuine_ak: TpmPublic) -> None:
    exc = refused(with_attributes(genuine_ak, set_=ObjectAttributes.DECRYPT))
    assert "decryption" in exc.detail
    assert f"0x{int(genuine_ak.object_attributes | ObjectAttributes.DECRYPT):08x}" in exc.detail


def test_decrypt_is_refused_even_without_sign(genuine_ak: TpmPublic) -> None:
    # A restricted decryption key (a storage key) is not an AK, whatever else is wrong with it.
    ak = with_attributes(genuine_ak, clear=ObjectAttributes.SIGN_ENCRYPT,
                         set_=ObjectAttributes.DECRYPT)
    assert lacks(refused(ak)) == ["sign"]


@pytest.mark.parametrize("extra", [ObjectAttributes.NO_DA, ObjectAttributes.ST_CLEAR])
def test_unrelated_attributes_do_not_matter(genuine_ak: TpmPublic, extra: ObjectAttributes) -> None:
    check_ak_attributes(with_attributes(genuine_ak, set_=extra))
    check_ak_attributes(with_attributes(genuine_ak, clear=ObjectAttributes.USER_WITH_AUTH))


# -- a real TPM's AK -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swtpm_aks(swtpm_node: Swtpm, tmp_path_factory: pytest.TempPathFactory) -> list[TpmPublic]:
    from attest.tpm.device import Tpm
    state = tmp_path_factory.mktemp("ak-state")
    with Tpm(swtpm_node.tcti) as t:
        return [parse_tpm2b_public(t.load_or_create_ak(state, kind).public)
                for kind in ("ecc", "rsa")]


@needs_swtpm[0]
@needs_swtpm[1]
def test_swtpm_aks_pass_and_each_broken_bit_is_refused(swtpm_aks: list[TpmPublic]) -> None:
    for ak in swtpm_aks:
        check_ak_attributes(ak)
        for name, bit in REQUIRED.items():
            assert lacks(refused(with_attributes(ak, clear=bit))) == [name]
        assert "decryption" in refused(with_attributes(ak, set_=ObjectAttributes.DECRYPT)).detail


# -- over HTTP -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client]]:
    tmp: Path = tmp_path_factory.mktemp("ak-attr-server")
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    settings = Settings(data_dir=tmp / "srv", policy_dir=policies,
                        default_node_class="pi-k3s", nonce_ttl_seconds=30)
    srv = build_server(settings)
    with ServerThread(srv.app) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {srv.operator_token}"}) as client:
        yield srv, client


def enrol(server: tuple[Server, httpx.Client], name: str, ak: TpmPublic) -> httpx.Response:
    srv, client = server
    tpm = SimulatedTpm()
    tpm.ak_public = ak  # only the enrolment is exercised: the AK is never used to sign here
    cfg = srv.attest.config  # allowlist the EK, so that only the AK can be the reason to refuse
    cfg.ek_allowlist = cfg.ek_allowlist | {
        hashlib.sha256(tpm.ek_public.marshal_tpm2b()).hexdigest()}
    return SimulatedNode(name, client, tpm).enroll()


def assert_refused(server: tuple[Server, httpx.Client], name: str, resp: httpx.Response) -> str:
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["check"] == CHECK and body["type"] == f"urn:umec:attest:{CHECK}"
    assert server[1].get(f"/attest/v1/nodes/{name}").status_code == 404  # nothing was stored
    detail: str = body["detail"]
    return detail


def test_http_genuine_ak_is_enrolled(server: tuple[Server, httpx.Client],
                                     genuine_ak: TpmPublic) -> None:
    # The control: the same AK, unaltered, is accepted (so a refusal below is about the bit).
    resp = enrol(server, f"ok-{genuine_ak.type:x}", genuine_ak)
    assert resp.is_success, resp.text


@pytest.mark.parametrize("attr", list(REQUIRED))
def test_http_ak_missing_attribute_is_refused(server: tuple[Server, httpx.Client],
                                              genuine_ak: TpmPublic, attr: str) -> None:
    name = f"no-{attr.lower()}-{genuine_ak.type:x}"
    resp = enrol(server, name, with_attributes(genuine_ak, clear=REQUIRED[attr]))
    assert assert_refused(server, name, resp).startswith(f"AK lacks {attr} (")


def test_http_decrypting_ak_is_refused(server: tuple[Server, httpx.Client],
                                       genuine_ak: TpmPublic) -> None:
    name = f"decrypt-{genuine_ak.type:x}"
    resp = enrol(server, name, with_attributes(genuine_ak, set_=ObjectAttributes.DECRYPT))
    assert "decryption" in assert_refused(server, name, resp)
