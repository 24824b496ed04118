"""The objects OpenFaaS puts in the cluster for a function, in exactly faas-netes' shapes.

:func:`faas_netes_deployment` is what faas-netes' deploy handler writes for a ``faas-cli deploy``
(``pkg/handlers/deploy.go`` ``makeDeploymentSpec``, with the Helm chart's defaults: HTTP probes
on ``/_/health`` port 8080, ``imagePullPolicy: Always``, no fixed user): the Deployment named
after the function with the label ``faas_function``, the selector on it, the stack.yml labels
(``com.openfaas.scale.min``/``max``…) on the pod template, the stack.yml annotations plus
``prometheus.io.scrape: "false"`` on both, ``fprocess`` and the environment sorted by name, the
``temp`` emptyDir on ``/tmp`` for a read-only root filesystem, ``enableServiceLinks: false``,
rolling updates with ``maxUnavailable: 0``/``maxSurge: 1``, ``revisionHistoryLimit: 10`` and
the service account of ``com.openfaas.serviceaccount``.

:func:`replicaset_pod` is the Pod its ReplicaSet then creates, as the mutating webhooks see it:
name ``<fn>-<hash>-<suffix>``, ``pod-template-hash`` label, owner reference, and what the
ServiceAccount admission plugin (which runs before webhooks) added: ``serviceAccountName`` and
the ``kube-api-access-*`` projected volume mounted at /var/run/secrets/kubernetes.io/...
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Mapping
from typing import Any

FUNCTION_NAMESPACE = "openfaas-fn"


def _probe() -> dict[str, Any]:
    return {"httpGet": {"path": "/_/health", "port": 8080}, "initialDelaySeconds": 2,
            "timeoutSeconds": 1, "periodSeconds": 2, "successThreshold": 1,
            "failureThreshold": 3}


def faas_netes_deployment(service: str, image: str, *, labels: Mapping[str, str] = (
                          {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "5"}),
                          annotations: Mapping[str, str] | None = None,
                          env_process: str = "", env: Mapping[str, str] | None = None,
                          read_only_root: bool = True,
                          namespace: str = FUNCTION_NAMESPACE) -> dict[str, Any]:
    annotations = dict(annotations or {})
    annotations.setdefault("prometheus.io.scrape", "false")
    pod_labels = {"faas_function": service, **labels}
    env_vars = ([{"name": "fprocess", "value": env_process}] if env_process else []) + [
        {"name": k, "value": v} for k, v in (env or {}).items()]
    env_vars.sort(key=lambda e: e["name"])
    replicas = int(labels.get("com.openfaas.scale.min", "1"))
    container: dict[str, Any] = {
        "name": service, "image": image,
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": env_vars, "resources": {}, "imagePullPolicy": "Always",
        "livenessProbe": _probe(), "readinessProbe": _probe(),
        "securityContext": {"readOnlyRootFilesystem": read_only_root,
                            "allowPrivilegeEscalation": False}}
    pod_spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Always",
                                "dnsPolicy": "ClusterFirst", "enableServiceLinks": False}
    account = annotations.get("com.openfaas.serviceaccount")
    if account:
        pod_spec["serviceAccountName"] = account
    if read_only_root:
        pod_spec["volumes"] = [{"name": "temp", "emptyDir": {}}]
        container["volumeMounts"] = [{"name": "temp", "mountPath": "/tmp"}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": service, "namespace": namespace, "annotations": annotations,
                     "labels": {"faas_function": service}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"faas_function": service}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "revisionHistoryLimit": 10,
            "template": {"metadata": {"name": service, "labels": pod_labels,
                                      "annotations": dict(annotations)},
                         "spec": pod_spec}}}


def replicaset_pod(deployment: Mapping[str, Any], uid: str) -> dict[str, Any]:
    """The Pod the Deployment's ReplicaSet creates, after the ServiceAccount admission plugin."""
    template = copy.deepcopy(deployment["spec"]["template"])
    name = deployment["metadata"]["name"]
    template_hash = secrets.token_hex(5)[:10]
    meta = template["metadata"]
    meta.pop("name", None)
    meta.update(name=f"{name}-{template_hash}-{secrets.token_hex(3)[:5]}",
                generateName=f"{name}-{template_hash}-",
                namespace=deployment["metadata"]["namespace"], uid=uid,
                ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                  "name": f"{name}-{template_hash}", "uid": f"rs-{uid}",
                                  "controller": True, "blockOwnerDeletion": True}])
    meta["labels"]["pod-template-hash"] = template_hash
    spec = template["spec"]
    spec.setdefault("serviceAccountName", "default")
    api_access = f"kube-api-access-{secrets.token_hex(3)[:5]}"
    spec.setdefault("volumes", []).append({"name": api_access, "projected": {
        "defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    for container in spec["containers"]:
        container.setdefault("volumeMounts", []).append({
            "name": api_access, "readOnly": True,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
