"""The webhook's attestation facts from a real registry: the :class:`AttestationSource` of
:mod:`admission.service.admit`, over the registry clients (:mod:`admission.service.images`) and
the ``.att`` reader (:mod:`admission.signing.attest`).

Registry failures propagate (the webhook denies: fail closed); an envelope that does not verify
is a verdict with its failed check, and the policy (and Rego) decide what that means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from admission.core.attestations import EnvelopeVerdict
from admission.core.reference import parse_reference
from admission.registry.credentials import Credentials
from admission.service.images import RegistryClients
from admission.signing.attest import verify_image_attestations
from keys import PublicKey


class RegistryAttestations:
    """``AttestationSource``: every ``.att`` envelope of ``name@digest`` checked against keys."""

    def __init__(self, clients: RegistryClients) -> None:
        self.clients = clients

    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None) -> Sequence[EnvelopeVerdict]:
        client = self.clients.for_pod(credentials)
        return await verify_image_attestations(client, parse_reference(image), keys)
