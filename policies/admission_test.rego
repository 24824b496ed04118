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
