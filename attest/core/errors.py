"""Typed failures of attestation checks.

Every verification step raises a subclass of :class:`AttestationError`, a
:class:`kernel.errors.CheckedError`. The class name says which check failed, ``check`` is a
stable dotted identifier used in verdicts, logs and the API, ``detail`` names the offending value,
``hint`` tells the operator what to do next and ``status`` is the HTTP status the protocol routes
answer with (403 unless a class says otherwise). Nothing here carries a stack trace to a client:
the one handler (:mod:`kernel.problems`) renders problem+json with ``check``, ``detail``,
``hint`` and ``error`` (the class name, also the ``title``), typed ``urn:umec:attest:<check>``.
"""

from __future__ import annotations

from kernel.errors import CheckedError


class AttestationError(CheckedError):
    """A named attestation check failed."""

    check = "attestation"
    hint = "Inspect the node and its evidence; re-run the agent once fixed."
    status = 403
    problem_namespace = "urn:umec:attest:"
    class_named = True


class MalformedStructure(AttestationError):
    """A TPM structure or event log could not be parsed (truncated, oversized, wrong tag)."""

    check = "structure.parse"
    status = 400
    hint = "The agent sent bytes that are not a valid TPM structure; check agent and TPM versions."


class HostAgentOwnsNode(AttestationError):
    """A DaemonSet agent found the host agent's marker: this node is the host agent's to enrol
    (issue 13, attest/host_owner.py). Also raised when the marker cannot be looked for."""

    check = "agent.host_owned"
    status = 409
    hint = ("This node runs the host agent (umec-agent.service): keep the DaemonSet off it "
            "(kubectl label node NODE umec.io/agent=host) and let the host agent attest it.")
