# Tests of admission.rego. They call decide(inp) with literal inputs (no `with input as`, which
# crashes the embedded regopy evaluator), so they run both under `opa test` and from pytest
# (tests/test_rego.py queries every test_* rule).
package umec.admission_test

import data.umec.admission

digest := "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

ok_policy := {"policy": "ImagePolicy/a/p", "mode": "enforce", "satisfied": true, "reason": "", "signers": ["ci"]}

bad_policy := {"policy": "ImagePolicy/a/p", "mode": "enforce", "satisfied": false, "reason": "authority ci: 0 of the required 1 keys signed", "signers": []}

warn_policy := {"policy": "ClusterImagePolicy/w", "mode": "warn", "satisfied": false, "reason": "unsigned", "signers": []}

c(path, img, d, pols, nm) := {"path": path, "image": img, "digest": d, "error": null, "policies": pols, "no_match": nm}

test_signed_pod_allowed if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [ok_policy], null)]})
	d.allowed
	count(d.deny) == 0
}

test_empty_pod_denied if {
	not admission.decide({"namespace": "a", "containers": []}).allowed
}

test_tag_only_denied if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app:1", null, [], null)]})
	not d.allowed
	contains(d.deny[0], "digest.required")
	contains(d.deny[0], "spec.containers[0]")
}

test_unsatisfied_enforce_denied_names_path_image_step if {
	d := admission.decide({"namespace": "a", "containers": [
		c("spec.containers[0]", "r/app", digest, [ok_policy], null),
		c("spec.initContainers[0]", "r/init", digest, [bad_policy], null),
	]})
	not d.allowed
	count(d.deny) == 1
	# Checked piecewise: regopy 1.5 quotes some literal strings inside sprintf output.
	contains(d.deny[0], "spec.initContainers[0]")
	contains(d.deny[0], "r/init")
	contains(d.deny[0], "policy.unsatisfied")
	not contains(d.deny[0], "spec.containers[0]")
}

test_warn_mode_allows_with_warning if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [warn_policy], null)]})
	d.allowed
	count(d.warnings) == 1
}

test_enforce_and_warn_both_apply if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [warn_policy, bad_policy], null)]})
	not d.allowed
	count(d.warnings) == 1
}

test_no_match_deny if {
	not admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [], "deny")]}).allowed
}

test_no_match_missing_means_deny if {
	not admission.decide({"namespace": "a", "containers": [{"path": "p", "image": "i", "digest": digest}]}).allowed
}

test_no_match_allow if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [], "allow")]})
	d.allowed
	count(d.warnings) == 0
}

test_no_match_warn if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [], "warn")]})
	d.allowed
	count(d.warnings) == 1
}

test_error_denied_even_if_policies_satisfied if {
	e := {"path": "spec.ephemeralContainers[0]", "image": "r/dbg", "digest": digest, "error": {"check": "deadline.exceeded", "detail": "verify"}, "policies": [ok_policy], "no_match": null}
	d := admission.decide({"namespace": "a", "containers": [e]})
	not d.allowed
	d.deny[0] == "spec.ephemeralContainers[0]: image r/dbg: deadline.exceeded: verify"
}

test_bad_digest_string_denied if {
	not admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", "md5:00", [ok_policy], null)]}).allowed
}

# --- required attestations (facts from admission/core/attestation_policy.py) ----------------

slsa1 := "https://slsa.dev/provenance/v1"

prov_att(builder, source, repos) := {"signers": ["ci"], "predicate_type": slsa1, "builder_id": builder, "build_type": null, "source_repository": source, "source_repositories": repos, "commits": [], "sbom": null}

prov_req(atts, failures) := {"name": "provenance", "predicate_type": "slsaprovenance1", "predicate_types": [slsa1], "keys": ["ci"], "conditions": {"builder_id": "https://ci.example/builder", "source_repository": "https://git.example/acme/app"}, "attestations": atts, "failures": failures}

att_policy(mode, req) := {"policy": "ImagePolicy/a/p", "mode": mode, "satisfied": true, "reason": "", "signers": ["ci"], "attestations": [req]}

att_pod(mode, req) := {"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [att_policy(mode, req)], null)]}

test_attestation_meeting_conditions_admitted if {
	d := admission.decide(att_pod("enforce", prov_req([prov_att("https://ci.example/builder", "https://git.example/acme/app", ["https://git.example/acme/app"])], [])))
	d.allowed
	count(d.warnings) == 0
}

test_attestation_from_another_builder_denied_as_predicate if {
	d := admission.decide(att_pod("enforce", prov_req([prov_att("https://evil.example/builder", "https://git.example/acme/app", ["https://git.example/acme/app"])], [])))
	not d.allowed
	contains(d.deny[0], "attestation.predicate")
	contains(d.deny[0], "builder_id is https://evil.example/builder")
	contains(d.deny[0], "attestation provenance")
}

# Provenance for another repository that lists the wanted one as a dependency (review F8).
test_attestation_naming_the_repository_only_as_a_dependency_denied if {
	d := admission.decide(att_pod("enforce", prov_req([prov_att("https://ci.example/builder", "https://git.example/evil/app", ["https://git.example/acme/app", "https://git.example/evil/app"])], [])))
	not d.allowed
	contains(d.deny[0], "attestation.predicate")
	contains(d.deny[0], "source_repository is https://git.example/evil/app, want https://git.example/acme/app")
}

test_attestation_without_a_source_denied if {
	d := admission.decide(att_pod("enforce", prov_req([prov_att("https://ci.example/builder", null, ["https://git.example/acme/app"])], [])))
	not d.allowed
	contains(d.deny[0], "source_repository is none")
}

test_attestation_of_another_type_denied_as_predicate if {
	sbom := object.union(prov_att(null, null, []), {"predicate_type": "https://spdx.dev/Document"})
	d := admission.decide(att_pod("enforce", prov_req([sbom], [])))
	not d.allowed
	contains(d.deny[0], "attestation.predicate")
	contains(d.deny[0], "https://spdx.dev/Document")
}

test_attestation_first_failure_names_the_check if {
	f := [{"check": "attestation.subject", "detail": "about another digest"}, {"check": "attestation.signature", "detail": "x"}]
	d := admission.decide(att_pod("enforce", prov_req([], f)))
	not d.allowed
	count(d.deny) == 1
	contains(d.deny[0], "attestation.subject")
}

test_attestation_missing_denied if {
	d := admission.decide(att_pod("enforce", prov_req([], [])))
	not d.allowed
	contains(d.deny[0], "attestation.missing")
}

test_attestation_warn_mode_admits_with_warning if {
	d := admission.decide(att_pod("warn", prov_req([], [])))
	d.allowed
	count(d.warnings) == 1
	contains(d.warnings[0], "attestation.missing")
}

test_attestation_one_good_of_several_is_enough if {
	d := admission.decide(att_pod("enforce", prov_req([prov_att("https://evil.example/builder", null, []), prov_att("https://ci.example/builder", "https://git.example/acme/app", ["https://git.example/acme/app", "https://git.example/other"])], [{"check": "attestation.signature", "detail": "x"}])))
	d.allowed
}

# signedIdentity: ignore (a mirror's opt-out) admits with a warning each time it vouches.
ignore_policy := {"policy": "ClusterImagePolicy/mirror", "mode": "enforce", "satisfied": true, "reason": "", "signers": ["ci"], "identity": "ignore"}

test_identity_ignore_admits_with_a_warning if {
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "mirror.local/app", digest, [ignore_policy], null)]})
	d.allowed
	count(d.warnings) == 1
	contains(d.warnings[0], "signature.identity.ignored")
}

test_identity_checked_policies_do_not_warn if {
	checked := object.union(ok_policy, {"identity": "matchExact"})
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "r/app", digest, [checked], null)]})
	d.allowed
	count(d.warnings) == 0
}

test_identity_ignore_unsatisfied_denies_without_the_warning if {
	failing := object.union(ignore_policy, {"satisfied": false, "reason": "0 of 1"})
	d := admission.decide({"namespace": "a", "containers": [c("spec.containers[0]", "mirror.local/app", digest, [failing], null)]})
	not d.allowed
	count(d.warnings) == 0
}

test_attestation_failure_of_the_required_type_beats_other_types if {
	sbom := object.union(prov_att(null, null, []), {"predicate_type": "https://spdx.dev/Document"})
	f := [{"check": "attestation.signature", "detail": "signed by another key", "predicate_type": slsa1}]
	d := admission.decide(att_pod("enforce", prov_req([sbom], f)))
	not d.allowed
	contains(d.deny[0], "attestation.signature")
	contains(d.deny[0], "signed by another key")
}
