"""ImagePolicy semantics: thresholds, required signers, namespace scoping, modes, noMatch,
generations and strict parsing. Python computes the policies' facts; whether an image is
admitted is asked of Rego (``policies/admission.rego``), the one place that decides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from admission.core.policy import (
    AllOf,
    AnyOf,
    ImageDecision,
    KeyThreshold,
    PolicyInvalid,
    load_policies,
    load_policies_yaml,
)
from admission.core.rego_input import container_facts, review_facts
from admission.service.policy_dir import load_policy_set
from admission.service.rego import RegoEvaluator
from keys import public_key_pem
from tests.support.webhook import D1, D2, Sig, authority, key, kid, policy_doc

A1, A2, A3, B1 = key(), key(), key(), key()
IMG = "registry.example/tenant-a/app"
REGO = RegoEvaluator()


def admitted(decision: ImageDecision, namespace: str = "ns") -> bool:
    """Rego's decision on a one-container Pod running ``IMG@D1`` with these policy facts."""
    container = container_facts("spec.containers[0]", f"{IMG}@{D1}", D1, decision=decision)
    return REGO.decide(review_facts(namespace, "Pod", "CREATE", [container])).allowed


def sigs(*keys_: object, digest: str = D1) -> list[Sig]:
    return [Sig(digest, kid(k)) for k in keys_]  # type: ignore[arg-type]


def test_threshold_n_of_m_and_required_signer() -> None:
    ps = load_policies([policy_doc("p", ["registry.example/**"], [authority(
        "ci", {"a1": A1, "a2": A2, "a3": A3}, threshold=2, required=["a3"])])])
    ev = lambda *k: ps.evaluate("ns", IMG, sigs(*k), D1)  # noqa: E731
    assert admitted(ev(A1, A3)) and ev(A2, A3).verified
    one = ev(A3)
    assert not admitted(one)
    assert "1 of the required 2" in one.matched[0].reasons[0]
    no_required = ev(A1, A2)
    assert not admitted(no_required)
    assert "required signer(s) a3 did not sign" in no_required.matched[0].reasons[0]
    assert ev(A1, A2, A3).matched[0].signers == ("a1", "a2", "a3")
    # Duplicate signatures by one key count once.
    assert not admitted(ps.evaluate("ns", IMG, sigs(A3, A3), D1))


def test_signature_over_another_digest_does_not_count() -> None:
    ps = load_policies([policy_doc("p", ["**"], [authority("ci", {"a1": A1})])])
    assert admitted(ps.evaluate("ns", IMG, sigs(A1, digest=D1), D1))
    assert not admitted(ps.evaluate("ns", IMG, sigs(A1, digest=D2), D1))


def test_tenant_keys_never_admit_into_another_namespace() -> None:
    ps = load_policies([
        policy_doc("a", ["registry.example/**"], [authority("a", {"a1": A1})],
                   namespace="tenant-a"),
        policy_doc("b", ["registry.example/**"], [authority("b", {"b1": B1})],
                   namespace="tenant-b")])
    assert admitted(ps.evaluate("tenant-a", IMG, sigs(A1), D1), "tenant-a")
    in_b = ps.evaluate("tenant-b", IMG, sigs(A1), D1)
    assert not admitted(in_b, "tenant-b")
    assert [o.policy for o in in_b.matched] == ["ImagePolicy/tenant-b/b"]
    # A namespace with no policy of its own falls to noMatch (deny), never to tenant-a's keys.
    other = ps.evaluate("tenant-c", IMG, sigs(A1, B1), D1)
    assert other.matched == () and other.no_match == "deny" and not admitted(other, "tenant-c")
    # The verifier is asked about the applicable policies' keys only (issue 12, F3): a
    # tenant's keys are never tried for another namespace's pod.
    assert set(ps.keys_for("tenant-a", IMG)) == {kid(A1)}
    assert set(ps.keys_for("tenant-b", IMG)) == {kid(B1)}
    assert ps.keys_for("tenant-c", IMG) == {}


def test_cluster_and_namespace_policies_must_all_hold() -> None:
    ps = load_policies([
        policy_doc("base", ["**"], [authority("plat", {"p": A3})]),
        policy_doc("a", ["registry.example/**"], [authority("a", {"a1": A1})],
                   namespace="tenant-a")])
    assert not admitted(ps.evaluate("tenant-a", IMG, sigs(A1), D1), "tenant-a")
    assert not admitted(ps.evaluate("tenant-a", IMG, sigs(A3), D1), "tenant-a")
    assert admitted(ps.evaluate("tenant-a", IMG, sigs(A1, A3), D1), "tenant-a")


def test_warn_mode_allows_unverified_and_any_of() -> None:
    ps = load_policies([policy_doc("w", ["**"], [authority("x", {"a1": A1})], mode="warn")])
    d = ps.evaluate("ns", IMG, [], D1)
    assert admitted(d) and not d.verified and not d.matched[0].satisfied
    anyof = load_policies([policy_doc("p", ["**"], [authority("x", {"a1": A1}),
                                                    authority("y", {"b1": B1})], match="any")])
    assert admitted(anyof.evaluate("ns", IMG, sigs(B1), D1))
    assert not admitted(anyof.evaluate("ns", IMG, sigs(A2), D1))
    allof = load_policies([policy_doc("p", ["**"], [authority("x", {"a1": A1}),
                                                    authority("y", {"b1": B1})])])
    assert not admitted(allof.evaluate("ns", IMG, sigs(B1), D1))


def test_combinators_directly() -> None:
    t = KeyThreshold("t", {"a": "ka", "b": "kb"}, 2)
    assert AllOf((t,)).verify(frozenset({"ka", "kb"})).ok
    assert not AllOf((t,)).verify(frozenset({"ka"})).ok
    assert AnyOf((t, KeyThreshold("u", {"c": "kc"}, 1))).verify(frozenset({"kc"})).ok
    res = AnyOf((t,)).verify(frozenset())
    assert not res.ok and "none of the authorities" in res.reasons[0]


@pytest.mark.parametrize(("rules", "expected"), [
    ([], "deny"), (["allow"], "allow"), (["warn", "allow"], "warn"), (["allow", "deny"], "deny")])
def test_no_match_strictest_wins(rules: list[str], expected: str) -> None:
    docs = [policy_doc(f"c{i}", ["other.example/**"], [authority("x", {"a1": A1})], no_match=r)
            for i, r in enumerate(rules)]
    ps = load_policies(docs, default_no_match="allow" if rules else "deny")
    d = ps.evaluate("ns", IMG, [], D1)
    assert d.matched == () and d.no_match == expected
    assert admitted(d) == (expected != "deny")


def test_globs() -> None:
    ps = load_policies([policy_doc("p", ["docker.io/library/*", "reg:5000/team/*/app?"],
                                   [authority("x", {"a1": A1})])])
    p = ps.policies[0]
    assert p.matches("docker.io/library/nginx")
    assert not p.matches("docker.io/library/nginx/extra")
    assert p.matches("reg:5000/team/x/app1") and not p.matches("reg:5000/team/x/y/app1")
    assert not p.matches("docker.io/evil/nginx")


def test_generation_tracks_keys_and_rules() -> None:
    base = [policy_doc("p", ["**"], [authority("x", {"a1": A1})])]
    g1 = load_policies(base).generation
    assert g1 == load_policies(base).generation and len(g1) == 64
    assert g1 != load_policies([policy_doc("p", ["**"], [authority("x", {"a1": A2})])]).generation
    assert g1 != load_policies(base, default_no_match="allow").generation
    assert g1 != load_policies([policy_doc("p", ["**"], [authority("x", {"a1": A1})],
                                           mode="warn")]).generation


def test_yaml_stream_and_file_reference(tmp_path: object) -> None:
    pem = public_key_pem(A1)
    text = yaml.safe_dump_all([
        policy_doc("p", ["**"], [{"name": "x", "keys": [{"name": "f", "file": "/k.pub"}]}]),
        {"kind": "List", "items": [policy_doc("q", ["a/**"], [authority("y", {"b": B1})],
                                              namespace="n")]}])
    ps = load_policies_yaml(text, load_file=lambda p: pem if p == "/k.pub" else b"")
    assert [p.ref for p in ps.policies] == ["ClusterImagePolicy/p", "ImagePolicy/n/q"]
    with pytest.raises(PolicyInvalid, match="file references are not allowed"):
        load_policies_yaml(text)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(apiVersion="umec.io/v2"), "apiVersion"),
    (lambda d: d["spec"].update(imags=["x"]), "unknown key"),
    (lambda d: d["spec"].update(mode="audit"), "enforce or warn"),
    (lambda d: d["spec"]["authorities"][0].update(threshold=3), "threshold"),
    (lambda d: d["spec"]["authorities"][0].update(threshold=True), "threshold"),
    (lambda d: d["spec"]["authorities"][0].update(required=["nobody"]), "required"),
    (lambda d: d["spec"]["authorities"][0]["keys"][0].update(pem="garbage"), "PEM"),
    (lambda d: d["spec"]["authorities"][0]["keys"].append(
        d["spec"]["authorities"][0]["keys"][0] | {"name": "again"}), "listed twice"),
    (lambda d: d["spec"].update(images=[]), "non-empty list"),
    (lambda d: d["metadata"].update(namespace="ns"), "no namespace"),
    (lambda d: d.update(kind="ImagePolicy"), "metadata.namespace"),
])
def test_invalid_documents_rejected(mutate: object, message: str) -> None:
    doc = policy_doc("p", ["**"], [authority("x", {"a1": A1, "a2": A2})])
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PolicyInvalid, match=message):
        load_policies([doc])


def test_namespaced_policy_cannot_set_no_match_and_duplicates_rejected() -> None:
    doc = policy_doc("p", ["**"], [authority("x", {"a1": A1})], namespace="n", no_match="allow")
    with pytest.raises(PolicyInvalid, match="only a ClusterImagePolicy"):
        load_policies([doc])
    same = policy_doc("p", ["**"], [authority("x", {"a1": A1})])
    with pytest.raises(PolicyInvalid, match="defined twice"):
        load_policies([same, same])
    with pytest.raises(PolicyInvalid, match="YAML"):
        load_policies_yaml("a: [unclosed")


def test_policy_dir_reads_key_files_inside_it_only(tmp_path: Path) -> None:
    """``load_policy_set``: a key file named relative to the policy directory loads; one that
    leaves it (``..``, an absolute path, a symlink out) is refused before it is read."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ci.pub").write_bytes(public_key_pem(A1))
    (tmp_path / "outside.pub").write_bytes(public_key_pem(A2))
    (policies / "link.pub").symlink_to(tmp_path / "outside.pub")

    def write(name: str) -> None:
        doc = policy_doc("p", ["**"], [{"name": "ci", "keys": [{"name": "k", "file": name}]}])
        (policies / "p.yaml").write_text(yaml.safe_dump(doc))

    write("ci.pub")
    assert set(load_policy_set(policies).keys_for("ns", IMG)) == {kid(A1)}
    for escape in ("../outside.pub", str(tmp_path / "outside.pub"), "link.pub"):
        write(escape)
        with pytest.raises(ValueError, match="is outside the policy directory"):
            load_policy_set(policies)
    assert load_policy_set(None).policies == ()
