"""admission.core.token_volume: the projected token injected into annotated pods (OpenFaaS
functions). The patch applies cleanly to any pod shape, injects once (a second pass adds
nothing), mounts every container read-only, and leaves pods without the annotation alone."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from admission.core.token_volume import (
    ANNOTATION,
    AUDIENCE,
    INJECT,
    MOUNT_PATH,
    VOLUME,
    token_volume_patch,
)
from tests.support.fake_kube import apply_json_patch

NAMES = st.sampled_from(["app", "side", VOLUME, "temp"])
MOUNT = st.fixed_dictionaries({"name": NAMES, "mountPath": st.sampled_from(
    ["/tmp", MOUNT_PATH, "/data"])})
CONTAINER = st.fixed_dictionaries({"name": NAMES, "image": st.just("r/app@sha256:" + "1" * 64)},
                                  optional={"volumeMounts": st.lists(MOUNT, max_size=3)})
POD = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries({}, optional={"annotations": st.dictionaries(
        st.sampled_from([ANNOTATION, "other"]), st.sampled_from([INJECT, "no", ""]),
        max_size=2)}),
     "spec": st.fixed_dictionaries(
         {"containers": st.lists(CONTAINER, min_size=1, max_size=3)},
         optional={"initContainers": st.lists(CONTAINER, max_size=2),
                   "volumes": st.lists(st.fixed_dictionaries(
                       {"name": NAMES, "emptyDir": st.just({})}), max_size=3)})})


@given(POD)
def test_the_patch_applies_and_injects_once(pod: dict[str, Any]) -> None:
    ops = token_volume_patch(pod)
    patched = apply_json_patch(pod, ops)
    annotated = (pod["metadata"].get("annotations") or {}).get(ANNOTATION) == INJECT
    if not annotated:
        assert ops == [] and patched == pod
        return
    assert token_volume_patch(patched) == []           # idempotent (reinvocation)
    assert any(v["name"] == VOLUME for v in patched["spec"]["volumes"])
    for container in patched["spec"]["containers"] + patched["spec"].get("initContainers", []):
        assert any(m["mountPath"] == MOUNT_PATH or m["name"] == VOLUME
                   for m in container["volumeMounts"])


def test_the_injected_token_is_the_token_services_own() -> None:
    pod = {"metadata": {"annotations": {ANNOTATION: INJECT}},
           "spec": {"containers": [{"name": "fn", "image": "r/fn:1"}]}}
    patched = apply_json_patch(copy.deepcopy(pod), token_volume_patch(pod))
    volume = patched["spec"]["volumes"][0]
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"}
    assert patched["spec"]["containers"][0]["volumeMounts"] == [
        {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}]
