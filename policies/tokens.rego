# Scope decision for access tokens issued to attested workloads.
#
# Input (built by mec_api/tokens/scope_policy.py after every trust check has passed):
#   {"workload": {"namespace": "tenant-a", "service_account": "app", "node": "node-a"},
#    "requested": ["sensor.read", "camera.snapshot"],
#    "known_scopes": ["sensor.read", ...],                       # mec_api/scopes.py
#    "grants": [{"namespaces": ["tenant-*"], "service_accounts": ["*"],
#                "scopes": ["sensor.read", "inference.classify"]}]}   # operator's grant file
#
# Query `data.umec.tokens.decision`, always defined: {"granted": [...], "denied": [...]} where
# granted = requested ∩ scopes of every grant matching the workload, minus what the rules below
# forbid. Nothing is granted by default: no matching grant, no scope.
# The logic is the function `decide(inp)` (the embedded evaluator crashes on `with input as`).
package umec.tokens

decision := decide(input)

decide(inp) := {"granted": sort([s | some s in g]), "denied": sort([s | some s in d])} if {
	req := {s | some s in object.get(inp, "requested", [])}
	g := {s | some s in req; allowed(inp, s)}
	d := req - g
}

allowed(inp, scope) if {
	scope in object.get(inp, "known_scopes", [])
	some grant in object.get(inp, "grants", [])
	matches(grant, inp.workload)
	scope in object.get(grant, "scopes", [])
	not forbidden(inp.workload, scope)
}

matches(grant, w) if {
	some ns in object.get(grant, "namespaces", [])
	glob.match(ns, [], w.namespace)
	some sa in object.get(grant, "service_accounts", ["*"])
	glob.match(sa, [], w.service_account)
}

# Feeding readings in (the Ruuvi Gateway's HTTP POST) is the platform's job, never a tenant's:
# a tenant that could ingest could forge every tenant's sensor data. Platform namespaces are
# named umec-* (tenants cannot create namespaces).
forbidden(w, "sensor.ingest") if not startswith(w.namespace, "umec-")
