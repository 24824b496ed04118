"""Sample tenant apps for µMEC (issue 14): what a tenant ships, not part of the platform.

Nothing here imports the platform's packages (``attest``, ``admission``, ``mec_api``, ``keys``,
``kernel``, ``umec``): a tenant app knows µMEC only by its HTTP APIs, like any app in a tenant
namespace would.
"""
