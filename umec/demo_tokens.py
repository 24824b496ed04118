"""``umec demo``, part 3: scoped tokens for attested, signed apps and the APIs they unlock.

There is no Kubernetes here, so the demo plays the cluster's service-account issuer: an RSA key
whose JWKS the token service trusts (``token_sa_jwks_file``), minting projected tokens with
exactly Kubernetes' claim layout for the pods the webhook admitted. Everything else is real:
the token service, the guard, the sensor API with a Ruuvi Gateway POST, a camera reading a
video file, the classifier, and attestation over swtpm.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from keys import KeyKind, KeyRing, generate_private_key, sign_jwt

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# DESIGN.md's RAWv2 vector: 24.3 °C, 53.49 %RH, 100044 Pa, MAC CB:B8:33:4C:88:4F.
RUUVI_ADV = "0201061BFF9904" + "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
GRANTS = """grants:
  - namespaces: ["tenant-*"]
    scopes: [sensor.read, camera.snapshot, inference.classify, mec011.services.read,
             mec011.services.write, mec011.app-support]
  - namespaces: [umec-gateways]
    service_accounts: [ruuvi-gateway]
    scopes: [sensor.ingest]
"""


class DemoCluster:
    """The cluster's service-account token issuer, played by the demo."""

    def __init__(self) -> None:
        self.ring = KeyRing(generate_private_key(KeyKind.RSA_2048))

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.ring.jwks(datetime.now(UTC))))
        return path

    def pod_token(self, namespace: str, account: str, pod: str, uid: str, node: str) -> str:
        now = int(time.time())
        claims = {"aud": ["umec"], "exp": now + 3600, "iat": now, "nbf": now,
                  "iss": SA_ISSUER, "jti": str(uuid.uuid4()),
                  "sub": f"system:serviceaccount:{namespace}:{account}",
                  "kubernetes.io": {"namespace": namespace,
                                    "node": {"name": node, "uid": f"uid-{node}"},
                                    "pod": {"name": pod, "uid": uid},
                                    "serviceaccount": {"name": account, "uid": f"sa-{account}"}}}
        return sign_jwt(claims, self.ring)  # RS256 (the ring's alg), kid, typ JWT


def demo_video(path: Path) -> Path:
    """A short MJPG video of a real photo (scikit-image's coffee cup) for the demo camera."""
    import cv2
    import numpy as np
    try:
        from skimage import data
        frame = cv2.cvtColor(np.asarray(data.coffee()),  # type: ignore[no-untyped-call]
                             cv2.COLOR_RGB2BGR)
    except ImportError:  # the test extra is absent: a plain frame, labels will be arbitrary
        frame = np.full((400, 600, 3), 128, np.uint8)
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 5, (width, height))
    for _ in range(10):
        writer.write(frame)
    writer.release()
    return path


def _json(response: httpx.Response) -> Any:
    """The response's JSON, or ``{}`` when it has none: a refusal is a failed check of the
    demo, never a crash of it."""
    try:
        return response.json()
    except ValueError:
        return {}


@dataclass
class Pod:
    namespace: str
    account: str
    name: str
    uid: str
    node: str


def call_api(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One API call as an app should make it: a 503 with ``Retry-After`` (the guard refusing
    while its revocation list is not current, e.g. on an overloaded machine) is retried for up
    to 10 s; every other answer is returned as it is."""
    deadline = time.monotonic() + 10
    while True:
        r = httpx.request(method, url, timeout=60, **kwargs)
        wait = r.headers.get("retry-after", "")
        if r.status_code != 503 or not wait.isdigit() or time.monotonic() > deadline:
            return r
        time.sleep(min(float(wait), 2.0))


def token_story(console: Console, base_url: str, cluster: DemoCluster, app: Pod, gateway: Pod,
                unsigned: Pod, expect: Callable[[bool, str], None],
                tamper_app_node: Callable[[], dict[str, Any]]) -> None:
    def exchange(pod: Pod, scope: str) -> httpx.Response:
        subject = cluster.pod_token(pod.namespace, pod.account, pod.name, pod.uid, pod.node)
        return httpx.post(f"{base_url}/oauth2/token", timeout=30, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "scope": scope})

    gw = exchange(gateway, "sensor.ingest")
    expect(gw.status_code == 200, f"the Ruuvi gateway pod got {_json(gw).get('scope')!r}")
    post = call_api("POST", f"{base_url}/sensor/v1/gateway",
                      headers={"Authorization": f"Bearer {_json(gw).get('access_token')}"},
                      json={"data": {"coordinates": "", "timestamp": int(time.time()),
                                     "gw_mac": "C8:25:2D:8E:9C:2C",
                                     "tags": {"CB:B8:33:4C:88:4F": {
                                         "rssi": -65, "timestamp": int(time.time()),
                                         "data": RUUVI_ADV}}}})
    expect(post.status_code == 200, "the gateway posted one Ruuvi RAWv2 advertisement")

    r = exchange(app, "sensor.read camera.snapshot inference.classify mec011.services.read "
                      "sensor.ingest")
    body = _json(r)
    expect(r.status_code == 200 and "sensor.ingest" not in body.get("scope", ""),
           f"app {app.namespace}/{app.name} on {app.node} got a {body.get('token_type')} token, "
           f"scope {body.get('scope')!r}, {body.get('expires_in')} s (sensor.ingest refused)")
    auth = {"Authorization": f"Bearer {body.get('access_token')}"}
    latest = _json(call_api("GET", f"{base_url}/sensor/v1/tags/CB:B8:33:4C:88:4F/latest",
                            headers=auth))
    expect(latest.get("temperature_c") == 24.3,
           f"sensor: {latest.get('temperature_c')} °C, {latest.get('humidity_pct')} %RH, "
           f"{latest.get('pressure_pa')} Pa")
    listed = call_api("GET", f"{base_url}/mec_service_mgmt/v1/transports", headers=auth)
    transports = _json(listed) if listed.status_code == 200 else []
    oauth = (transports[0].get("security") or {}).get("oAuth2Info", {}) if transports else {}
    expect(oauth.get("tokenEndpoint") == f"{base_url}/oauth2/token",
           f"MEC 011 transports advertise the token endpoint: {oauth.get('tokenEndpoint')} "
           f"({listed.status_code})")
    snap = call_api("GET", f"{base_url}/camera/v1/cameras/demo-cam/snapshot", headers=auth)
    expect(snap.status_code == 200 and snap.content[:2] == b"\xff\xd8",
           f"camera: a {len(snap.content)} byte JPEG snapshot")
    classified = _json(call_api(
        "POST", f"{base_url}/inference/v1/models/efficientnet-lite0/classify-camera/demo-cam",
        headers=auth))
    top = (classified.get("predictions") or [{}])[0]
    expect(top.get("label") == "espresso",
           f"inference (server-side snapshot, the app never sees the frame): "
           f"{top.get('label')} {top.get('score', 0):.2f}")

    refused = exchange(unsigned, "sensor.read")
    expect(refused.status_code == 400 and _json(refused).get("check") == "admission.pod",
           f"pod with the unsigned image gets no token: {_json(refused).get('check')}: "
           f"{_json(refused).get('error_description')}")

    verdict = tamper_app_node()
    failed_at = time.monotonic()
    expect(verdict["state"] == "untrusted", f"{app.node} tampered with: {verdict['state']}")
    # Calls are sequential, so every call accepted was answered before the refused one was
    # sent: no access was granted after that send. The promise is met when that send is within
    # 1 s of the failed attestation (its answer may come later on a loaded machine).
    while True:
        sent = time.monotonic() - failed_at
        call = httpx.get(f"{base_url}/sensor/v1/tags", headers=auth, timeout=30)
        answered = time.monotonic() - failed_at
        # A 503 (the guard not current) grants nothing: keep asking until 401 or 200 says.
        if call.status_code not in (200, 503) or sent > 5:
            break
        time.sleep(0.01)
    expect(call.status_code == 401 and sent <= 1.0,
           f"the app's next call is refused {sent * 1000:.0f} ms after the failed "
           f"attestation: {call.status_code} {_json(call).get('detail')} (answered at "
           f"{answered * 1000:.0f} ms)")
