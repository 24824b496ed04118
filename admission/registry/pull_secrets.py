"""A pod's registry credentials, read from the Kubernetes API (official ``kubernetes`` client).

The kubelet pulls with the pod's ``imagePullSecrets`` or, when the pod lists none, with its
ServiceAccount's. The webhook resolves tags and fetches signatures from the same registries, so
it uses the same credentials, in the same order:

1. the Secrets named in the pod spec, in the pod's namespace (never another namespace: a pod
   cannot borrow another tenant's credentials by naming them);
2. otherwise the ``imagePullSecrets`` of its ServiceAccount (``default`` when unnamed);
3. a Secret that does not exist, or is not of a docker-config type, is skipped, as the kubelet
   skips it; the webhook's own docker ``config.json`` still applies after the pod's credentials.

Any other API failure (forbidden, timeout, 5xx) raises :class:`PullSecretsUnavailable`, and the
review is denied (fail closed) rather than checked with the wrong credentials. Credentials are
cached per (namespace, Secret) for ``ttl`` seconds so a busy namespace costs one API read per
Secret per TTL; a rotated Secret is picked up within that time.

RBAC: ``get`` on ``secrets`` and ``serviceaccounts`` (``deploy/rbac.yaml``), best granted per
tenant namespace with a RoleBinding to the ``umec-webhook-pull-secrets`` ClusterRole.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import urllib3.exceptions

from admission.core.errors import AdmissionError
from admission.core.review import PullSecretRefs
from admission.registry.credentials import Credentials, CredentialsMalformed

if TYPE_CHECKING:  # the kubernetes client costs ~35 MiB: loaded only when pull secrets are on
    from kubernetes.client import CoreV1Api

DOCKER_SECRET_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")


class PullSecretsUnavailable(AdmissionError):
    check = "credentials.pull_secrets"
    hint = ("The webhook could not read the pod's imagePullSecrets from the Kubernetes API. "
            "Bind the umec-webhook-pull-secrets ClusterRole in this namespace (get on secrets "
            "and serviceaccounts) and check the API server; the pod is denied until then.")


class KubePullSecrets:
    """``PullCredentialSource`` over the Kubernetes API."""

    def __init__(self, core_v1: CoreV1Api, *, ttl: float = 30.0,
                 request_timeout: float = 3.0) -> None:
        self.api = core_v1
        self.ttl = ttl
        self.request_timeout = request_timeout
        self._cache: dict[tuple[str, str, str], tuple[float, Any]] = {}

    async def credentials(self, namespace: str, refs: PullSecretRefs) -> Credentials:
        names = refs.names or await self._account_secret_names(namespace, refs.service_account)
        secrets = []
        for name in names:
            secret = await self._read("secret", namespace, name)
            if secret is not None and secret.get("type") in DOCKER_SECRET_TYPES:
                secrets.append(secret)
        try:
            return Credentials.from_pull_secrets(secrets)
        except CredentialsMalformed as e:
            raise CredentialsMalformed(f"namespace {namespace!r}: {e.detail}") from None

    async def _account_secret_names(self, namespace: str, account: str) -> tuple[str, ...]:
        sa = await self._read("serviceaccount", namespace, account)
        refs = (sa or {}).get("imagePullSecrets") or []
        return tuple(r["name"] for r in refs
                     if isinstance(r, dict) and isinstance(r.get("name"), str))

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]  # type: ignore[no-any-return]
        obj = await asyncio.to_thread(self._read_blocking, kind, namespace, name)
        self._cache[key] = (now + self.ttl, obj)
        if len(self._cache) > 4096:  # bounded: drop expired entries, then the oldest
            for k in [k for k, (exp, _) in self._cache.items() if exp <= now] or \
                    list(self._cache)[:1024]:
                self._cache.pop(k, None)
        return obj

    def _read_blocking(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        try:
            # Raw JSON, not the client's models: Secret data stays base64 exactly as stored.
            options: dict[str, Any] = {"_preload_content": False,
                                       "_request_timeout": self.request_timeout}
            if kind == "secret":
                response: Any = self.api.read_namespaced_secret(name, namespace, **options)
            else:
                response = self.api.read_namespaced_service_account(name, namespace, **options)
            doc = json.loads(response.data)
        except ApiException as e:
            if e.status == 404:
                return None
            raise PullSecretsUnavailable(
                f"reading {kind} {namespace}/{name}: HTTP {e.status} {e.reason}") from None
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as e:
            raise PullSecretsUnavailable(
                f"reading {kind} {namespace}/{name}: {type(e).__name__}") from None
        if not isinstance(doc, dict):
            raise PullSecretsUnavailable(f"reading {kind} {namespace}/{name}: not an object")
        return doc
