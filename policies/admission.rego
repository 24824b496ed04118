# Admission decision over a pod and the per-image verification results.
#
# Input (built by admission/core/rego_input.py from the AdmissionReview and the policies' facts):
#   {"namespace": "tenant-a", "operation": "CREATE", "kind": "Pod",
#    "containers": [{"path": "spec.containers[0]", "image": "reg/app:1.0",
#                    "digest": "sha256:…" | null,
#                    "error": {"check": "registry.timeout", "detail": "…"} | null,
#                    "policies": [{"policy": "ImagePolicy/ns/name", "mode": "enforce" | "warn",
#                                  "satisfied": bool, "reason": "…", "signers": ["…"]}],
#                    "no_match": null | "deny" | "allow" | "warn"}]}
#
# Query `data.umec.admission.decision`: it always has a value {allowed, deny, warnings}, unlike
# a bare rule left at its default, which an embedded evaluator may report as undefined.
# The logic is the function `decide(inp)` so that the tests call it with literal inputs instead
# of `with input as` (which crashes the embedded regopy 1.5 evaluator).
# Every message names the container path, the image and the step (check id) that failed.
# Steps, in order: the request had containers; no image hit an error while resolving or
# verifying (registry down, deadline, bad signature data); each image is pinned by digest;
# each image is covered by a policy or noMatch allows it; every enforce-mode policy is satisfied.
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

denials(inp) := ((((empty_pod(inp) | errors(inp)) | unpinned(inp)) | no_match_denied(inp)) | policy_denied(inp))

warnings(inp) := policy_warned(inp) | no_match_warned(inp)

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
