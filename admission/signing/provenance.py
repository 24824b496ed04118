"""``umec provenance``: a minimal SLSA v1 provenance predicate for ``umec attest --type
slsaprovenance1`` (https://slsa.dev/spec/v1.0/provenance), written by the CI job itself::

    {"buildDefinition": {"buildType": BUILD_TYPE,
                         "externalParameters": {"source": {"repository": REPO, "ref": REF}},
                         "internalParameters": {},
                         "resolvedDependencies": [{"uri": "git+REPO@REF",
                                                   "digest": {"gitCommit": COMMIT}}]},
     "runDetails": {"builder": {"id": BUILDER_ID},
                    "metadata": {"invocationId": URL, "startedOn": T, "finishedOn": T}}}

The fields an admission policy compares (``builderId``, ``sourceRepository``, ``buildType``) are
read back by :func:`admission.core.attestations.statement_facts`. From a CI job, the values come
from its environment (:func:`ci_values`): GitHub Actions (``GITHUB_SERVER_URL``,
``GITHUB_REPOSITORY``, ``GITHUB_WORKFLOW_REF``, ``GITHUB_SHA``, ``GITHUB_REF``, run id and
attempt) or GitLab CI (``CI_SERVER_URL``, ``CI_PROJECT_URL``, ``CI_PROJECT_PATH``,
``CI_CONFIG_PATH``, ``CI_COMMIT_SHA``, ``CI_COMMIT_REF_NAME``, ``CI_JOB_URL``). This is
provenance the build *asserts* about itself (SLSA Build L1; signed with the CI key, L2 at best):
the policy trusts it as far as it trusts that key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from admission.core.errors import AdmissionError

DEFAULT_BUILD_TYPE = "https://umec.io/buildtypes/oci-image/v1"


class ProvenanceIncomplete(AdmissionError):
    check = "provenance.incomplete"
    hint = ("Give --builder-id, --source-repo and --commit, or run in GitHub Actions / GitLab CI "
            "with --from-env github|gitlab.")


@dataclass(frozen=True)
class BuildValues:
    builder_id: str = ""
    source_repository: str = ""
    commit: str = ""
    ref: str = ""
    invocation_id: str = ""


def _github(env: Mapping[str, str]) -> BuildValues:
    server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "")
    workflow = env.get("GITHUB_WORKFLOW_REF", "")
    run = env.get("GITHUB_RUN_ID", "")
    invocation = (f"{server}/{repo}/actions/runs/{run}/attempts/"
                  f"{env.get('GITHUB_RUN_ATTEMPT', '1')}") if repo and run else ""
    return BuildValues(f"{server}/{workflow}" if workflow else "",
                       f"{server}/{repo}" if repo else "", env.get("GITHUB_SHA", ""),
                       env.get("GITHUB_REF", ""), invocation)


def _gitlab(env: Mapping[str, str]) -> BuildValues:
    server = env.get("CI_SERVER_URL", "").rstrip("/")
    project = env.get("CI_PROJECT_PATH", "")
    config = env.get("CI_CONFIG_PATH", ".gitlab-ci.yml")
    ref = env.get("CI_COMMIT_REF_NAME", "")
    builder = f"{server}/{project}/-/blob/{ref}/{config}" if server and project and ref else ""
    return BuildValues(builder, env.get("CI_PROJECT_URL", ""), env.get("CI_COMMIT_SHA", ""),
                       f"refs/heads/{ref}" if ref and not ref.startswith("refs/") else ref,
                       env.get("CI_JOB_URL", ""))


def ci_values(ci: str, env: Mapping[str, str]) -> BuildValues:
    """What a CI job's environment says about the build (``none``: nothing)."""
    if ci == "github":
        return _github(env)
    if ci == "gitlab":
        return _gitlab(env)
    return BuildValues()


def merged(base: BuildValues, **given: str | None) -> BuildValues:
    """``base`` with every value given explicitly (non-empty) taking precedence."""
    values = {k: getattr(base, k) for k in BuildValues.__dataclass_fields__}
    values.update({k: v for k, v in given.items() if v})
    return BuildValues(**values)


def slsa_v1_predicate(values: BuildValues, *, build_type: str = DEFAULT_BUILD_TYPE,
                      started: str | None = None, finished: str | None = None
                      ) -> dict[str, Any]:
    """The predicate (module doc); builder id, source repository and commit are required."""
    missing = [flag for flag, value in (("--builder-id", values.builder_id),
                                        ("--source-repo", values.source_repository),
                                        ("--commit", values.commit)) if not value]
    if missing:
        raise ProvenanceIncomplete(f"missing {', '.join(missing)}")
    source: dict[str, str] = {"repository": values.source_repository}
    uri = f"git+{values.source_repository}"
    if values.ref:
        source["ref"] = values.ref
        uri += f"@{values.ref}"
    metadata = {k: v for k, v in (("invocationId", values.invocation_id),
                                  ("startedOn", started), ("finishedOn", finished)) if v}
    return {"buildDefinition": {"buildType": build_type,
                                "externalParameters": {"source": source},
                                "internalParameters": {},
                                "resolvedDependencies": [{"uri": uri,
                                                          "digest": {"gitCommit": values.commit}}]},
            "runDetails": {"builder": {"id": values.builder_id}, "metadata": metadata}}
