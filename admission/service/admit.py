"""The admission flow behind ``/mutate`` and ``/validate`` (HTTP lives in ``webhook.py``).

``/mutate`` (:meth:`Admitter.mutate`):
  1. skip untouched: DELETE/CONNECT and the webhook's own namespace (which namespaces reach
     the webhook at all is the webhook configuration's namespaceSelector);
  2. resolve every image given by tag to its digest (single flight, short TTL cache);
  3. answer a JSONPatch that pins each of those images to its digest, and for a Pod CREATE
     annotated ``umec.io/token: inject`` mounts the token service's projected token
     (:mod:`admission.core.token_volume`: OpenFaaS functions, whose pod spec faas-netes writes).
``/validate`` (:meth:`Admitter.validate`):
  1. the same skips;
  2. every image must carry a digest (an image by tag is denied: mutation may have been
     bypassed or the tag may move);
  3. verify signatures with the keys and keyless authorities of the policies that apply to the
     image *in the pod's namespace* (``PolicySet.scope``: the namespace's ImagePolicies and the
     ClusterImagePolicies, never another tenant's), single flight, cached per (hash of those
     policies, image@digest), so editing one tenant's policy keeps the others' verdicts;
     likewise, when a policy requires attestations, the image's ``.att`` envelopes against the
     applicable attestation keys (:mod:`admission.service.attestations`), concurrently;
  4. evaluate the ImagePolicies of the pod's namespace plus the ClusterImagePolicies;
  5. Rego takes the final decision (deny messages name container path, image and step);
  6. record the admitted Pod (namespace, name, uid → digests and signer key ids).
Everything runs under an internal deadline below the webhook ``timeoutSeconds``; whatever is
unfinished at the deadline is denied, naming the image and the step that was still running.
Any unexpected exception denies too: this flow fails closed.

Pod deletion (:meth:`Admitter.forget_deleted`), at ``/validate``:
  * a Pod DELETE review (the UID is ``oldObject.metadata.uid``) forgets the pod's admission
    record, and the injected writers revoke its tokens in that transaction. It is always
    allowed: a failed or slow write (``forget_deadline_seconds``) is logged and counted
    (``umec_admission_forget_failures``) and the pod reconciler catches up (``umec``);
  * a Pod CREATE/UPDATE with ``metadata.deletionTimestamp`` (a terminating pod, e.g. a
    finalizer removed) forgets the record the same way and is then answered as any other, but
    never re-creates the record.
Dry runs forget nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from admission.core.attestations import EnvelopeVerdict
from admission.core.errors import AdmissionError
from admission.core.keyless import KeylessAuthority
from admission.core.policy import ImageDecision, PolicySet, Signer, VerificationScope
from admission.core.rego_input import container_facts, review_facts
from admission.core.review import (
    ContainerImage,
    PullSecretRefs,
    ReviewRequest,
    container_images,
    pin_patch,
    pull_secret_refs,
    review_response,
    split_image,
)
from admission.core.token_volume import token_volume_patch
from admission.registry.credentials import Credentials
from admission.service.cache import SingleFlightCache
from admission.service.denials import DeniedContainer, attribute
from admission.service.metrics import WebhookMetrics
from admission.service.records import AdmittedImage
from admission.service.rego import RegoDecision, RegoFailed
from keys import PublicKey

log = logging.getLogger("umec.admission.webhook")


class ImageResolver(Protocol):
    async def resolve(self, image: str, credentials: Credentials | None = None) -> str:
        """Digest (``sha256:…``) the image's tag points to now (with the pod's credentials)."""


class SignatureVerifier(Protocol):
    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None,
                     keyless: Sequence[KeylessAuthority] = ()) -> Sequence[Signer]:
        """Signatures of ``image`` (``name@digest``) valid under ``keys`` (key id → key) or
        made keyless by one of ``keyless``'s identities, whatever docker-reference they name
        (each policy's signedIdentity judges that)."""


class AttestationSource(Protocol):
    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None) -> Sequence[EnvelopeVerdict]:
        """Every stored attestation of ``image`` (``name@digest``) checked against ``keys``."""


class PullCredentialSource(Protocol):
    async def credentials(self, namespace: str, refs: PullSecretRefs) -> Credentials:
        """The registry credentials the kubelet would use for this pod."""


class AdmissionRecords(Protocol):
    def record(self, *, namespace: str, name: str, uid: str, images: Sequence[AdmittedImage],
               verified: bool, policy_generation: str) -> None: ...


class ForgettingRecords(Protocol):
    def forget(self, uids: Sequence[str], reason: str) -> list[str]:
        """Delete these pods' records, revoking their tokens in the same transaction."""


class DenialSink(Protocol):
    def note(self, *, namespace: str, name: str, kind: str, operation: str, endpoint: str,
             uid: str, containers: Sequence[DeniedContainer], message: str) -> None:
        """Keep one denial for the operator; must not block (``SqlDenialLog`` queues it)."""


class RegoDecider(Protocol):
    def decide(self, rego_input: dict[str, Any]) -> RegoDecision: ...


class DeadlineExceeded(AdmissionError):
    check = "deadline.exceeded"
    hint = ("The registry or the signature check did not answer in time; the pod is denied "
            "(fail closed). Check registry health and retry.")


class StepFailed(AdmissionError):
    check = "step.failed"
    hint = "An unexpected error stopped the check; the pod is denied (fail closed)."


@dataclass
class WebhookDeps:
    policies: Callable[[], PolicySet]          # the current set (hot-reloadable)
    resolver: ImageResolver
    verifier: SignatureVerifier
    rego: RegoDecider
    records: AdmissionRecords | None = None
    # Where denials are kept for the dashboard (issue 14); None: logged and counted only.
    denials: DenialSink | None = None
    own_namespace: str = "umec-system"
    pull_secrets: PullCredentialSource | None = None
    # The images' attestations; None: a policy requiring one finds none (denied, fail closed).
    attestations: AttestationSource | None = None
    timeout_seconds: float = 10.0              # the webhook configuration's timeoutSeconds
    forget_deadline_seconds: float = 2.0       # below the pods-DELETE webhook's timeoutSeconds
    deadline_seconds: float | None = None      # default: timeout - 1 s
    resolve_ttl: float = 30.0
    verify_ttl: float = 300.0
    max_review_bytes: int = 3 * 1024 * 1024
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    # GET /metrics needs ``Authorization: Bearer <it>``; "": loopback clients only
    # (kernel.metrics_access).
    metrics_token: str = field(default="", repr=False)
    # GET /readyz: whether the policies are loaded (a PolicyWatch: every resource listed once)
    # and a probe of the database that raises when it does not answer (None: no database).
    policies_loaded: Callable[[], bool] = lambda: True
    database_ping: Callable[[], None] | None = None

    @property
    def deadline(self) -> float:
        return self.deadline_seconds if self.deadline_seconds is not None \
            else max(0.5, self.timeout_seconds - 1.0)

    @cached_property
    def admitter(self) -> Admitter:
        """The admission flow over these collaborators, one per deps: its caches live as
        long as the webhook app that holds the deps (``app.state.webhook``)."""
        return Admitter(self)


@dataclass
class _Image:
    container: ContainerImage
    step: str = "parse"
    credentials: Credentials | None = None
    digest: str | None = None
    normalized: str = ""
    signers: tuple[Signer, ...] = ()
    attestations: tuple[EnvelopeVerdict, ...] = ()
    error: AdmissionError | None = None
    done: bool = False


class Admitter:
    def __init__(self, deps: WebhookDeps) -> None:
        self.deps = deps
        # Keyed by credentials too: a pod must not learn, from the cache, where a tag points in
        # a registry it has no credentials for.
        self.resolved: SingleFlightCache[tuple[str, str], str] = \
            SingleFlightCache(deps.resolve_ttl)
        self.verified: SingleFlightCache[tuple[str, str], tuple[Signer, ...]] = \
            SingleFlightCache(deps.verify_ttl)
        self.attested: SingleFlightCache[tuple[str, str], tuple[EnvelopeVerdict, ...]] = \
            SingleFlightCache(deps.verify_ttl)

    def _skip(self, req: ReviewRequest) -> bool:
        # An unsupported kind is NOT skipped: images we cannot find are images we did not
        # verify. container_images() raises UnsupportedKind, which denies (fail closed); the
        # webhook configurations in deploy/ only route the supported kinds here anyway.
        return (req.operation not in ("CREATE", "UPDATE") or req.object is None
                or req.namespace == self.deps.own_namespace)

    async def _timed(self, step: str, coro: Awaitable[Any]) -> Any:
        t = time.perf_counter()
        try:
            return await coro
        finally:
            self.deps.metrics.registry_latency.labels(step).observe(time.perf_counter() - t)

    async def _resolve(self, item: _Image) -> None:
        item.step = "resolve"
        image, creds = item.container.image, item.credentials
        digest, hit = await self.resolved.get(
            (image, creds.fingerprint() if creds else ""),
            lambda: self._timed("resolve", self.deps.resolver.resolve(image, creds)))
        self._count("resolve", hit)
        item.digest = digest

    async def _verify(self, item: _Image, policies: PolicySet, namespace: str) -> None:
        item.step = "verify"
        ref = f"{split_image(item.container.image).name}@{item.digest}"
        scope = policies.scope(namespace, item.normalized)
        key = (scope.digest, f"{item.normalized}@{item.digest}")
        await asyncio.gather(self._signatures(item, scope, ref, key),
                             self._attestations(item, scope, ref, key))

    async def _signatures(self, item: _Image, scope: VerificationScope, ref: str,
                          key: tuple[str, str]) -> None:
        keys, keyless = scope.keys, scope.keyless
        if not keys and not keyless:  # no policy covers it: nothing to verify, noMatch decides
            return
        # Signature validity is a property of the digest, so the cache is shared across pods;
        # pulling the image still needs the pod's own credentials at the kubelet.
        signers, hit = await self.verified.get(
            key, lambda: self._verify_now(ref, keys, item.credentials, keyless))
        self._count("verify", hit)
        item.signers = signers

    async def _attestations(self, item: _Image, scope: VerificationScope, ref: str,
                            key: tuple[str, str]) -> None:
        keys = scope.attestation_keys
        source = self.deps.attestations
        if not keys or source is None:  # without a source the facts say none: Rego denies
            return

        async def fetch() -> tuple[EnvelopeVerdict, ...]:
            return tuple(await self._timed("attestations",
                                           source.verify(ref, keys, item.credentials)))
        verdicts, hit = await self.attested.get(key, fetch)
        self._count("attestations", hit)
        item.attestations = verdicts

    async def _verify_now(self, ref: str, keys: Mapping[str, PublicKey],
                          credentials: Credentials | None,
                          keyless: Sequence[KeylessAuthority]) -> tuple[Signer, ...]:
        return tuple(await self._timed(
            "verify", self.deps.verifier.verify(ref, keys, credentials, keyless)))

    def _count(self, cache: str, hit: bool) -> None:
        m = self.deps.metrics
        (m.cache_hits if hit else m.cache_misses).labels(cache).inc()

    async def _run_all(self, items: list[_Image],
                       work: Callable[[_Image], Awaitable[None]]) -> None:
        """Run ``work`` per image under the deadline; record typed errors on the items."""
        async def guarded(item: _Image) -> None:
            try:
                await work(item)
                item.done = True
            except AdmissionError as e:
                item.error = e
            except Exception as e:  # fail closed, but say which step broke
                item.error = StepFailed(f"{item.step}: {type(e).__name__}: {str(e)[:200]}")

        todo = [i for i in items if i.error is None]
        if not todo:
            return
        tasks = [asyncio.ensure_future(guarded(i)) for i in todo]
        _, pending = await asyncio.wait(tasks, timeout=self.deps.deadline)
        for t in pending:
            t.cancel()  # the shared registry flight itself is shielded and carries on
        for item in todo:
            if item.error is None and not item.done:
                item.error = DeadlineExceeded(
                    f"step {item.step!r} for image {item.container.image} did not finish "
                    f"within the {self.deps.deadline:g}s deadline")

    async def _items(self, req: ReviewRequest) -> list[_Image]:
        assert req.object is not None
        items = [_Image(c) for c in container_images(req.kind, req.object)]
        credentials = await self._pull_credentials(req, items)
        for item in items:
            item.credentials = credentials
            try:
                parts = split_image(item.container.image)
                item.digest, item.normalized = parts.digest, parts.normalized
            except AdmissionError as e:
                item.error = e
        return items

    async def _pull_credentials(self, req: ReviewRequest,
                                items: list[_Image]) -> Credentials | None:
        """The pod's imagePullSecrets (or its ServiceAccount's), when a source is wired and
        some image still needs the registry. Failure marks every image (fail closed)."""
        source = self.deps.pull_secrets
        if source is None or not items:
            return None
        assert req.object is not None
        try:
            refs = pull_secret_refs(req.kind, req.object)
            return await asyncio.wait_for(source.credentials(req.namespace, refs),
                                          self.deps.deadline)
        except AdmissionError as e:
            error: AdmissionError = e
        except TimeoutError:
            error = DeadlineExceeded(f"reading the imagePullSecrets of namespace "
                                     f"{req.namespace!r} took longer than the deadline")
        for item in items:
            item.step, item.error = "credentials", error
        return None

    async def mutate(self, req: ReviewRequest) -> dict[str, Any]:
        items: list[_Image] = []
        answer = await self._mutate(req, items)
        self._note_denial(req, "mutate", answer, items)
        return answer

    async def _mutate(self, req: ReviewRequest, items: list[_Image]) -> dict[str, Any]:
        if self._skip(req):
            return review_response(req.uid, allowed=True)
        items.extend(await self._items(req))
        for item in items:
            item.step = "resolve"
        await self._run_all([i for i in items if i.digest is None], self._resolve)
        failed = [i for i in items if i.error is not None]
        if failed:
            msg = "; ".join(f"{i.container.path}: image {i.container.image}: "
                            f"{i.error.check}: {i.error.detail}" for i in failed if i.error)
            return review_response(req.uid, allowed=False, message=msg)
        pins = [(i.container, i.digest) for i in items
                if i.digest and "@" not in i.container.image]
        patch = pin_patch(pins)
        if req.kind == "Pod" and req.operation == "CREATE" and req.object is not None:
            patch += token_volume_patch(req.object)  # umec.io/token: inject (OpenFaaS)
        return review_response(req.uid, allowed=True, patch=patch)

    async def validate(self, req: ReviewRequest) -> dict[str, Any]:
        items: list[_Image] = []
        answer = await self._validate(req, items)
        self._note_denial(req, "validate", answer, items)
        return answer

    async def _validate(self, req: ReviewRequest, items: list[_Image]) -> dict[str, Any]:
        if await self.forget_deleted(req) or self._skip(req):
            return review_response(req.uid, allowed=True)
        policies = self.deps.policies()
        items.extend(await self._items(req))
        for item in items:
            item.step = "verify"
        await self._run_all([i for i in items if i.digest is not None],
                            lambda i: self._verify(i, policies, req.namespace))
        rego_input, decisions = self._rego_input(req, items, policies)
        try:
            verdict = self.deps.rego.decide(rego_input)
        except RegoFailed as e:
            return review_response(req.uid, allowed=False, message=f"{e.check}: {e.detail}")
        if not verdict.allowed:
            return review_response(req.uid, allowed=False, message="; ".join(verdict.deny),
                                   warnings=verdict.warnings)
        if req.kind == "Pod" and self.deps.records is not None and not req.dry_run \
                and not terminating(req):
            try:
                await self._record(req, items, decisions, policies)
            except Exception as e:  # the token service relies on the record: fail closed
                return review_response(req.uid, allowed=False,
                                       message=f"record.failed: {type(e).__name__}")
        return review_response(req.uid, allowed=True, warnings=verdict.warnings)

    def _note_denial(self, req: ReviewRequest, endpoint: str, answer: dict[str, Any],
                     items: list[_Image]) -> None:
        """Hand a denial to the denial sink (queued, never awaited: the answer does not wait).
        The allow path returns at the first test."""
        sink = self.deps.denials
        response = answer.get("response") or {}
        if sink is None or response.get("allowed") or req.dry_run:
            return
        message = str((response.get("status") or {}).get("message") or "")
        try:
            sink.note(namespace=req.namespace, name=req.name, kind=req.kind,
                      operation=req.operation, endpoint=endpoint, uid=req.uid,
                      containers=denied_containers(items, message), message=message)
        except Exception as e:  # the denial stands; only the dashboard's copy is lost
            log.warning("denial not kept for the dashboard",
                        extra={"error": type(e).__name__, "namespace": req.namespace})

    async def forget_deleted(self, req: ReviewRequest) -> bool:
        """Forget the record of a deleted or terminating pod; True when the review is a Pod
        DELETE (then always allowed, whatever the write did)."""
        delete = req.kind == "Pod" and req.operation == "DELETE"
        if not delete and not terminating(req):
            return False
        if req.dry_run:
            return delete
        uid = _object_uid(req.old_object if delete else req.object)
        what = "deleted" if delete else "terminating"
        if uid is None:  # nothing to forget by; the reconciler finds the record by its UID
            self._forget_failed(req.operation, None, f"the {what} pod's review names no UID")
        else:
            await self._forget(uid, f"pod {req.namespace}/{req.name} {what} "
                                    f"({req.operation} review)", req.operation)
        return delete

    async def _forget(self, uid: str, reason: str, operation: str) -> None:
        records = self.deps.records
        forget = getattr(records, "forget", None)
        if forget is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(forget, [uid], reason),
                                   self.deps.forget_deadline_seconds)
        except Exception as e:  # never block a deletion; the pod reconciler catches up
            self._forget_failed(operation, uid, f"{type(e).__name__}: {str(e)[:200]}")

    def _forget_failed(self, operation: str, uid: str | None, error: str) -> None:
        self.deps.metrics.forget_failures.labels(operation).inc()
        log.error("forgetting a deleted pod's admission record failed; its tokens stay valid "
                  "until the pod reconciler forgets it",
                  extra={"pod_uid": uid, "operation": operation, "error": error})

    def _rego_input(self, req: ReviewRequest, items: list[_Image],
                    policies: PolicySet) -> tuple[dict[str, Any], list[bool]]:
        """Rego's input (facts only: Rego decides) and, per image, whether every matching
        policy is satisfied (what the admission record says)."""
        containers, verified = [], []
        for item in items:
            decision = None
            if item.error is None and item.digest is not None:
                decision = policies.evaluate(req.namespace, item.normalized, item.signers,
                                             item.digest, item.attestations,
                                             image=item.container.image)
                _warn_unchecked_identity(req, item.container.image, decision)
            containers.append(container_facts(item.container.path, item.container.image,
                                              item.digest, error=item.error,
                                              decision=decision))
            verified.append(decision is not None and decision.verified)
        return review_facts(req.namespace, req.kind, req.operation, containers), verified

    async def _record(self, req: ReviewRequest, items: list[_Image], verified: list[bool],
                      policies: PolicySet) -> None:
        assert self.deps.records is not None and req.object is not None
        meta = req.object.get("metadata") or {}
        uid = meta.get("uid") if isinstance(meta.get("uid"), str) and meta.get("uid") \
            else req.uid
        images = [AdmittedImage(i.container.path, i.container.image, i.digest or "",
                                tuple(sorted({s.key_id for s in i.signers
                                              if s.digest == i.digest})))
                  for i in items]
        record: dict[str, Any] = {
            "namespace": req.namespace, "name": req.name, "uid": str(uid), "images": images,
            "verified": all(verified), "policy_generation": policies.generation}
        # A store that batches writes (one transaction for all reviews waiting) says so with
        # ``record_async``; either way the answer waits until the record is committed.
        record_async = getattr(self.deps.records, "record_async", None)
        if record_async is not None:
            await record_async(**record)
        else:
            await asyncio.to_thread(self.deps.records.record, **record)



def _warn_unchecked_identity(req: ReviewRequest, image: str, decision: ImageDecision) -> None:
    """A WARNING per admission that a ``signedIdentity: ignore`` policy vouched for: the
    signatures' docker-reference was not compared with the image (a mirror's opt-out)."""
    for outcome in decision.matched:
        if outcome.identity == "ignore" and outcome.satisfied:
            log.warning("image admitted without checking which image its signatures name "
                        "(signedIdentity: ignore)",
                        extra={"check": "signature.identity.ignored", "policy": outcome.policy,
                               "image": image, "namespace": req.namespace, "pod": req.name})


def denied_containers(items: Sequence[_Image], message: str) -> list[DeniedContainer]:
    """Each container of a denied review with its digest, signers and the failed checks its
    part of the answer's message names (``; ``-joined Rego deny messages)."""
    pairs = [(i.container.path, i.container.image) for i in items]
    failed, _ = attribute(pairs, message.split("; ") if message else [])
    return [DeniedContainer(i.container.path, i.container.image, i.digest,
                            tuple(sorted({s.key_id for s in i.signers if s.digest == i.digest})),
                            tuple(failed.get(i.container.path, ())))
            for i in items]


def terminating(req: ReviewRequest) -> bool:
    """A Pod CREATE/UPDATE whose object carries ``metadata.deletionTimestamp``."""
    if req.kind != "Pod" or req.operation not in ("CREATE", "UPDATE") or req.object is None:
        return False
    meta = req.object.get("metadata")
    return isinstance(meta, dict) and meta.get("deletionTimestamp") not in (None, "")


def _object_uid(obj: dict[str, Any] | None) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return uid if isinstance(uid, str) and uid else None
