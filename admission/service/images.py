"""The webhook's image facts from a real registry: the :class:`ImageResolver` and the
:class:`SignatureVerifier` of :mod:`admission.service.admit`, over the registry client
(:mod:`admission.registry`) and cosign verification (:mod:`admission.signing.verify`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from admission.core.keyless import KeylessAuthority
from admission.core.reference import parse_reference
from admission.core.verify import VerifiedSignature, repository_of
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.signing.verify import verify_image_signatures
from keys import PublicKey


class RegistryClients:
    """One registry client per set of pod credentials, sharing one connection pool.

    A pod's imagePullSecrets come first, then the webhook's own docker config (the kubelet's
    order). Clients are kept for the last ``size`` credential sets so bearer tokens are reused.
    """

    def __init__(self, base: RegistryClient, size: int = 128) -> None:
        self.base = base
        self.size = size
        self._clients: OrderedDict[str, RegistryClient] = OrderedDict()

    def for_pod(self, credentials: Credentials | None) -> RegistryClient:
        if credentials is None or not len(credentials):
            return self.base
        merged = credentials.merged(self.base.credentials)
        key = merged.fingerprint()
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self.base.with_credentials(merged)
            while len(self._clients) > self.size:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return client


class RegistryResolver:
    """``ImageResolver``: the digest a tag points to now, from the image's registry."""

    def __init__(self, clients: RegistryClients) -> None:
        self.clients = clients

    async def resolve(self, image: str, credentials: Credentials | None = None) -> str:
        client = self.clients.for_pod(credentials)
        return (await client.resolve(parse_reference(image))).digest


class CosignVerifier:
    """``SignatureVerifier``: cosign legacy signatures and bundles valid for exactly the digest.

    Registry failures propagate (the webhook denies: fail closed); signature failures just mean
    fewer signers, and the policy decides whether that is enough. Every signed docker-reference
    comes back (``check_identity=False``): each policy's ``signedIdentity`` judges it.
    """

    def __init__(self, clients: RegistryClients) -> None:
        self.clients = clients

    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None,
                     keyless: Sequence[KeylessAuthority] = ()) -> Sequence[VerifiedSignature]:
        client = self.clients.for_pod(credentials)
        ref = parse_reference(image)
        # Legacy `.sig` first: when every policy key already signed there, the bundle lookup
        # (two more registry requests on registries without the referrers API) can only
        # repeat what we know. Otherwise look at both formats.
        if not keyless:
            signers, _ = await verify_image_signatures(client, ref, keys, bundles=False,
                                                       check_identity=False)
            # Counted only where they name this repository: a bundle by the same key may
            # still be what a policy accepts.
            if {s.key_id for s in signers if s.reference is not None and repository_of(
                    s.reference) == repository_of(ref.name)} >= set(keys):
                return signers
        signers, _ = await verify_image_signatures(client, ref, keys, authorities=keyless,
                                                   check_identity=False)
        return signers
