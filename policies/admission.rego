# Admission decision over a pod and the per-image verification results.
#
# Input (built by admission/core/rego_input.py from the AdmissionReview and the policies' facts):
#   {"namespace": "tenant-a", "operation": "CREATE", "kind": "Pod",
#    "containers": [{"path": "spec.containers[0]", "image": "reg/app:1.0",
#                    "digest": "sha256:…" | null,
#                    "error": {"check": "registry.timeout", "detail": "…"} | null,
#                    "policies": [{"policy": "ImagePolicy/ns/name", "mode": "enforce" | "warn",
#                                  "satisfied": bool, "reason": "…", "signers": ["…"],
#                                  "attestations": [REQUIREMENT],
#                                  "identity": "matchRepository" | "matchExact" |
#                                              "exactRepository" | "ignore"}],
# "identity" is the policy's signedIdentity (admission/core/identity.py): "ignore" admits
# signatures naming any image (a mirror's opt-out), which every admission it vouches for warns.
#                    "no_match": null | "deny" | "allow" | "warn"}]}
# REQUIREMENT (admission/core/attestation_policy.py; one per spec.attestations entry):
#   {"name": "provenance", "predicate_type": "slsaprovenance1",
#    "predicate_types": ["https://slsa.dev/provenance/v1"], "keys": ["ci"],
#    "conditions": {"builder_id": "…", "source_repository": "…", "build_type": "…"},
#    "attestations": [{"signers": ["ci"], "predicate_type": "…", "builder_id": "…" | null,
#                      "build_type": "…" | null, "source_repository": "…" | null,
#                      "source_repositories": ["…"], "commits": ["…"],
#                      "sbom": null | {"format": "spdx", "version": "…", "packages": 12}}],
#    "failures": [{"check": "attestation.subject", "detail": "…",       # most telling first
#                  "predicate_type": "…"}]}    # the type the payload claims (unverified)
# "attestations" holds the envelopes whose DSSE signature verified under one of the
# requirement's keys and whose subject is this digest; "failures" why the others do not count.
#
# Query `data.umec.admission.decision`: it always has a value {allowed, deny, warnings}, unlike
# a bare rule left at its default, which an embedded evaluator may report as undefined.
# The logic is the function `decide(inp)` so that the tests call it with literal inputs instead
# of `with input as` (which crashes the embedded regopy 1.5 evaluator).
# Every message names the container path, the image and the step (check id) that failed.
# Steps, in order: the request had containers; no image hit an error while resolving or
# verifying (registry down, deadline, bad signature data); each image is pinned by digest;
# each image is covered by a policy or noMatch allows it; every enforce-mode policy is satisfied,
# its required attestations included (attestation.* check ids, see attestation_failure below).
package umec.admission

decision := decide(input)

decide(inp) := {
	"allowed": count(d) == 0,
	"deny": sort([m | some m in d]),
	"warnings": sort([m | some m in w]),
} if {
	d := denials(inp)
	w := warnings(inp)
}

containers(inp) := object.get(inp, "containers", [])

has_error(c) if object.get(c, "error", null) != null

pinned(c) if {
	not has_error(c)
	is_string(object.get(c, "digest", null))
	startswith(c.digest, "sha256:")
}

unmatched(c) if {
	pinned(c)
	count(object.get(c, "policies", [])) == 0
}

denials(inp) := (((((empty_pod(inp) | errors(inp)) | unpinned(inp)) | no_match_denied(inp)) | policy_denied(inp)) | attestation_denied(inp))

warnings(inp) := ((policy_warned(inp) | no_match_warned(inp)) | attestation_warned(inp)) | identity_unchecked(inp)

empty_pod(inp) := {"pod: containers: no containers in the request" | count(containers(inp)) == 0}

errors(inp) := {msg |
	some c in containers(inp)
	has_error(c)
	msg := sprintf("%s: image %s: %s: %s", [c.path, c.image, c.error.check, c.error.detail])
}

unpinned(inp) := {msg |
	some c in containers(inp)
	not has_error(c)
	not pinned(c)
	msg := sprintf("%s: image %s: digest.required: images must be pinned by digest (@sha256:…)", [c.path, c.image])
}

no_match_denied(inp) := {msg |
	some c in containers(inp)
	unmatched(c)
	object.get(c, "no_match", "deny") == "deny"
	msg := sprintf("%s: image %s: policy.no_match: no ImagePolicy of namespace %s nor ClusterImagePolicy covers this image", [c.path, c.image, object.get(inp, "namespace", "")])
}

no_match_warned(inp) := {msg |
	some c in containers(inp)
	unmatched(c)
	c.no_match == "warn"
	msg := sprintf("%s: image %s: policy.no_match (admitted, noMatch: warn): no policy covers this image", [c.path, c.image])
}

policy_denied(inp) := {msg |
	some c in containers(inp)
	pinned(c)
	some p in c.policies
	p.mode != "warn"
	p.satisfied != true
	msg := sprintf("%s: image %s: policy.unsatisfied: %s: %s", [c.path, c.image, p.policy, p.reason])
}

policy_warned(inp) := {msg |
	some c in containers(inp)
	pinned(c)
	some p in c.policies
	p.mode == "warn"
	p.satisfied != true
	msg := sprintf("%s: image %s: policy.unsatisfied (warn mode, admitted): %s: %s", [c.path, c.image, p.policy, p.reason])
}

identity_unchecked(inp) := {msg |
	some c in containers(inp)
	pinned(c)
	some p in c.policies
	object.get(p, "identity", "matchRepository") == "ignore"
	p.satisfied == true
	msg := sprintf("%s: image %s: signature.identity.ignored: %s accepts signatures naming any image (signedIdentity: ignore)", [c.path, c.image, p.policy])
}

# --- required attestations ------------------------------------------------------------------
# A requirement is met by one verified attestation (signed by one of its keys, about this
# digest) of an accepted predicate type whose facts meet every condition.

condition_holds("builder_id", want, a) if a.builder_id == want

condition_holds("build_type", want, a) if a.build_type == want

# The source the builder defines (attestations.py: _source_repository), never a dependency:
# source_repositories also lists resolvedDependencies/materials, for display only.
condition_holds("source_repository", want, a) if a.source_repository == want

typed_attestations(r) := [a | some a in r.attestations; a.predicate_type in r.predicate_types]

# Failures of envelopes whose payload claims an accepted type (a claim, unverified: it only
# picks the most telling reason, e.g. "the provenance is signed by another key").
relevant_failures(r) := [f | some f in r.failures; object.get(f, "predicate_type", "") in r.predicate_types]

attestation_met(r) if {
	some a in typed_attestations(r)
	every k, want in r.conditions {
		condition_holds(k, want, a)
	}
}

found_value(k, a) := a[k] if {
	is_string(a[k])
} else := "none"

unmet_conditions(r, a) := [concat("", [k, " is ", found_value(k, a), ", want ", want]) |
	want := r.conditions[k]
	not condition_holds(k, want, a)
]

# Messages are built with concat, not sprintf: regopy 1.5's sprintf quotes strings that a
# builtin computed (concat's result), which corrupts its JSON output.
attestation_reason(r) := {"check": "attestation.predicate", "detail": concat("", ["no ", r.predicate_type, " attestation signed by ", concat(", ", r.keys), " meets the conditions: ", concat("; ", unmet_conditions(r, typed_attestations(r)[0]))])} if {
	count(typed_attestations(r)) > 0
} else := relevant_failures(r)[0] if {
	count(relevant_failures(r)) > 0
} else := {"check": "attestation.predicate", "detail": concat("", ["the attestations signed by ", concat(", ", r.keys), " are of type ", concat(", ", sort({a.predicate_type | some a in r.attestations})), ", not ", r.predicate_type])} if {
	count(r.attestations) > 0
} else := r.failures[0] if {
	count(r.failures) > 0
} else := {"check": "attestation.missing", "detail": concat("", ["no ", r.predicate_type, " attestation signed by ", concat(", ", r.keys), " for this digest"])}

# The failure of an unmet requirement (undefined when it is met).
attestation_failure(r) := f if {
	not attestation_met(r)
	f := attestation_reason(r)
}

attestation_denied(inp) := {msg |
	some c in containers(inp)
	pinned(c)
	some p in c.policies
	p.mode != "warn"
	some r in object.get(p, "attestations", [])
	f := attestation_failure(r)
	msg := concat("", [c.path, ": image ", c.image, ": ", f.check, ": ", p.policy, ": attestation ", r.name, ": ", f.detail])
}

attestation_warned(inp) := {msg |
	some c in containers(inp)
	pinned(c)
	some p in c.policies
	p.mode == "warn"
	some r in object.get(p, "attestations", [])
	f := attestation_failure(r)
	msg := concat("", [c.path, ": image ", c.image, ": ", f.check, " (warn mode, admitted): ", p.policy, ": attestation ", r.name, ": ", f.detail])
}
