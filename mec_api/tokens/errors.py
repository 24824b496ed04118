"""Typed refusals of the token service, each mapped to an OAuth 2.0 error code (RFC 6749 §5.2,
RFC 8693 §2.2.2, RFC 9449 §5) plus our own ``check`` naming the failed step and a ``hint``.

Each is a :class:`kernel.errors.CheckedError`, but the token endpoint catches it and answers RFC
6749 JSON ``{"error", "error_description", "check", "hint"}`` (:meth:`TokenRefused.as_dict`), not
problem+json: an OAuth client reads nothing else. The status is the one the RFCs give (400, or
401 for ``invalid_client``); never a stack trace.
"""

from __future__ import annotations

from typing import ClassVar

from kernel.errors import CheckedError


class TokenRefused(CheckedError):
    """The token endpoint refuses to issue; ``error`` is the OAuth error code."""

    error: ClassVar[str] = "invalid_request"
    status = 400
    check = "token"
    hint = "Fix the token request and try again."

    def as_dict(self) -> dict[str, str]:
        """RFC 6749's error body; a non-public error's detail (the server's own setup) is
        replaced by a generic sentence: the log has it."""
        detail = self.detail if self.public else "the server could not decide; nothing was issued"
        return {"error": self.error, "error_description": detail, "check": self.check,
                "hint": self.hint}


class InvalidRequest(TokenRefused):
    check = "request.parameters"
    hint = ("Send application/x-www-form-urlencoded with grant_type, subject_token and "
            "subject_token_type (RFC 8693), or client_assertion (RFC 7523).")


class UnsupportedGrantType(TokenRefused):
    error = "unsupported_grant_type"
    check = "request.grant_type"
    hint = ("Use grant_type urn:ietf:params:oauth:grant-type:token-exchange or "
            "client_credentials with a jwt-bearer client_assertion.")


class SubjectTokenInvalid(TokenRefused):
    error = "invalid_grant"
    check = "subject.token"
    hint = ("Send the pod's projected service-account token with the audience the token "
            "service expects (serviceAccountToken.audience in the pod spec); it must be current.")


class ClientAssertionInvalid(SubjectTokenInvalid):
    error = "invalid_client"
    status = 401
    check = "client.assertion"


class SubjectIdentityIncomplete(TokenRefused):
    error = "invalid_grant"
    check = "subject.identity"
    hint = ("Only projected tokens bound to a pod are accepted (they carry kubernetes.io "
            "namespace, serviceaccount, pod and node); legacy Secret tokens are not.")


class PodNotAdmitted(TokenRefused):
    error = "invalid_grant"
    check = "admission.pod"
    hint = ("The pod was not admitted by the µMEC admission webhook with verified image "
            "signatures; sign its images and recreate the pod in an opted-in namespace.")


class NodeNotTrusted(TokenRefused):
    error = "invalid_grant"
    check = "node.trust"
    hint = ("The pod's node is not attested as trusted right now (or its last passing "
            "evidence is too old); tokens are issued again once it attests successfully.")


class ScopeNotGranted(TokenRefused):
    error = "invalid_scope"
    check = "scope.granted"
    hint = ("Request only scopes policies/tokens.rego grants to this workload "
            "(see scopes_supported).")


class ScopeInvalid(TokenRefused):
    """The ``scope`` parameter is beyond the caps (count or length of its scope-tokens)."""

    error = "invalid_scope"
    check = "request.scope"
    hint = ("Ask only for the scopes the workload needs (scopes_supported in the metadata "
            "lists them all), space-separated; the number of scopes and the length of each "
            "is capped, as error_description says.")


class DpopProofInvalid(TokenRefused):
    error = "invalid_dpop_proof"
    check = "dpop.proof"
    hint = ("Send one fresh DPoP proof per request (RFC 9449): typ dpop+jwt, an asymmetric alg, "
            "the public jwk, htm/htu of this request, a recent iat and a unique jti.")


class ClusterKeysUnavailable(TokenRefused):
    error = "temporarily_unavailable"
    status = 503
    public = False  # its detail names the server's files and URLs: logged, not answered
    check = "subject.cluster_keys"
    hint = ("The cluster's service-account keys (OIDC discovery / JWKS) could not be read; "
            "nothing was issued. Retry shortly; operators: check UMEC_TOKEN_SA_* settings.")


class PolicyFailed(TokenRefused):
    error = "server_error"
    status = 500
    public = False  # its detail is Rego output and policy paths: logged, not answered
    check = "policy.evaluation"
    hint = ("The token policy could not be evaluated; nothing was issued. "
            "Check policies/tokens.rego.")


class KeyRotationRefused(CheckedError):
    """The operator's key rotation cannot be done as asked (problem+json, not OAuth JSON)."""

    check = "tokens.rotate"
    status = 400
    hint = ("Pass an overlap of at least the token lifetime (UMEC_TOKEN_LIFETIME_SECONDS), or "
            "rotate on a server that holds the access-token key directory.")


class KeyDirectoryUnusable(KeyRotationRefused):
    """The key directory cannot be read or written: the server's setup, not the request."""

    check = "tokens.key_directory"
    status = 503
    hint = ("Check that the server's access-token key directory (UMEC_DATA_DIR/keys/"
            "access-tokens) exists and is writable by the server, then rotate again.")


class KeyRingFull(KeyRotationRefused):
    """As many keys are published as allowed: rotating again waits for an overlap to end."""

    check = "tokens.rotate_too_many"
    status = 409
    hint = ("Wait until an earlier key's overlap ends, or rotate with a shorter "
            "--overlap-seconds next time.")
