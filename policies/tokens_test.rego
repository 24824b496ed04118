package umec.tokens_test

import data.umec.tokens

known := ["sensor.read", "sensor.ingest", "camera.snapshot", "inference.classify"]

grants := [
	{"namespaces": ["tenant-*"], "service_accounts": ["*"], "scopes": ["sensor.read", "inference.classify"]},
	{"namespaces": ["tenant-a"], "service_accounts": ["cam"], "scopes": ["camera.snapshot", "sensor.ingest"]},
	{"namespaces": ["umec-gateways"], "service_accounts": ["gateway"], "scopes": ["sensor.ingest"]},
	{"namespaces": ["gateways-*"], "service_accounts": ["gateway"], "scopes": ["sensor.ingest"]},
]

inp(ns, sa, req) := {"workload": {"namespace": ns, "service_account": sa, "node": "n"}, "requested": req, "known_scopes": known, "grants": grants}

test_requested_intersect_granted if {
	d := tokens.decide(inp("tenant-a", "app", ["sensor.read", "camera.snapshot"]))
	d.granted == ["sensor.read"]
	d.denied == ["camera.snapshot"]
}

test_service_account_specific_grant if {
	d := tokens.decide(inp("tenant-a", "cam", ["camera.snapshot", "sensor.read"]))
	d.granted == ["camera.snapshot", "sensor.read"]
}

test_other_tenant_gets_nothing_from_tenant_a_grant if {
	d := tokens.decide(inp("tenant-b", "cam", ["camera.snapshot"]))
	d.granted == []
}

test_unmatched_namespace_gets_nothing if {
	d := tokens.decide(inp("default", "app", ["sensor.read"]))
	d.granted == []
	d.denied == ["sensor.read"]
}

test_ingest_never_for_a_tenant_even_if_granted if {
	d := tokens.decide(inp("tenant-a", "cam", ["sensor.ingest"]))
	d.granted == []
}

test_ingest_for_the_platform_gateway if {
	d := tokens.decide(inp("umec-gateways", "gateway", ["sensor.ingest"]))
	d.granted == ["sensor.ingest"]
}

test_ingest_never_outside_platform_namespaces_even_if_granted if {
	d := tokens.decide(inp("gateways-a", "gateway", ["sensor.ingest"]))
	d.granted == []
}

test_unknown_scope_never_granted if {
	g := [{"namespaces": ["*"], "service_accounts": ["*"], "scopes": ["admin"]}]
	d := tokens.decide({"workload": {"namespace": "x", "service_account": "y", "node": "n"}, "requested": ["admin"], "known_scopes": known, "grants": g})
	d.granted == []
}

test_empty_input_grants_nothing if {
	d := tokens.decide({"workload": {"namespace": "x", "service_account": "y"}})
	d.granted == []
}
