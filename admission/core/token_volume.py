"""The token-service credential for pods whose controller cannot add one: a projected
service-account token with the token service's audience, injected at admission.

A tenant's pod spec names its own projected token (``serviceAccountToken`` with audience
``umec``, deploy/examples/tenant-app.yaml). Controllers that write the pod spec themselves,
such as faas-netes for OpenFaaS functions, offer no volumes; they do copy the workload's
annotations to its pods. A pod annotated ``umec.io/token: inject`` therefore gets, in the
mutating webhook's patch (as the EKS pod identity webhook injects its web-identity token):

* the volume ``umec-token``: projected ``serviceAccountToken`` (audience :data:`AUDIENCE`,
  3600 s, path ``token``), unless the pod has a volume of that name;
* a read-only mount of it at :data:`MOUNT_PATH` in every container and init container that has
  no mount there (so a reinvocation after another webhook added a container mounts it too).

The token is the pod's own, bound to the pod and its node by the API server, exactly what a
tenant's pod spec would ask for; it grants nothing by itself (the token service still checks the
admission record and the node's trust). Pure: the pod in, JSONPatch operations out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ANNOTATION = "umec.io/token"
INJECT = "inject"
VOLUME = "umec-token"
MOUNT_PATH = "/var/run/secrets/umec"
AUDIENCE = "umec"            # the token service's UMEC_TOKEN_SA_AUDIENCES (its default)
EXPIRATION_SECONDS = 3600


def token_volume() -> dict[str, Any]:
    return {"name": VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": AUDIENCE, "expirationSeconds": EXPIRATION_SECONDS, "path": "token"}}]}}


def _mount_ops(spec: Mapping[str, Any], field: str) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    containers = spec.get(field)
    if not isinstance(containers, list):
        return ops
    mount = {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        mounts = container.get("volumeMounts")
        if not isinstance(mounts, list):
            ops.append({"op": "add", "path": f"/spec/{field}/{i}/volumeMounts",
                        "value": [mount]})
        elif not any(isinstance(m, dict) and (m.get("mountPath") == MOUNT_PATH
                                              or m.get("name") == VOLUME) for m in mounts):
            ops.append({"op": "add", "path": f"/spec/{field}/{i}/volumeMounts/-",
                        "value": mount})
    return ops


def token_volume_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSONPatch operations injecting the token volume into ``pod`` (none unless annotated)."""
    meta = pod.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    spec = pod.get("spec")
    if not isinstance(annotations, dict) or annotations.get(ANNOTATION) != INJECT \
            or not isinstance(spec, dict):
        return []
    ops: list[dict[str, Any]] = []
    volumes = spec.get("volumes")
    if not isinstance(volumes, list):
        ops.append({"op": "add", "path": "/spec/volumes", "value": [token_volume()]})
    elif not any(isinstance(v, dict) and v.get("name") == VOLUME for v in volumes):
        ops.append({"op": "add", "path": "/spec/volumes/-", "value": token_volume()})
    return ops + _mount_ops(spec, "initContainers") + _mount_ops(spec, "containers")
