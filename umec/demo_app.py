"""``umec demo``, the sample app: the tenant web app of ``umec_examples.classifier_app`` started
as its own process on loopback, as the admitted pod ``tenant-a/classifier-app-1`` on node-a.

Its projected service-account token is written to a file (the demo plays the kubelet, as
``umec.demo_tokens`` plays the cluster's issuer); the app exchanges it at the token service
itself, holds the access token, and calls the camera and inference APIs. The demo then asks
the app what a browser asks it (``POST /api/classify``) and prints its URL.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

POD = ("tenant-a", "classifier-app", "classifier-app-1", "node-a")  # namespace, SA, pod, node
ACTION = {"X-Classifier-App": "1"}  # what the app's page sends (its CSRF header)


@dataclass(frozen=True)
class SampleApp:
    url: str
    log: Path

    def classify(self) -> tuple[int, dict[str, Any]]:
        """What the page's button does: status and JSON body (``{}`` when it has none)."""
        answer = httpx.post(f"{self.url}/api/classify", headers=ACTION, timeout=90)
        try:
            body = answer.json()
        except ValueError:
            body = {}
        return answer.status_code, body if isinstance(body, dict) else {}


def start_sample_app(stack: contextlib.ExitStack, work: Path, log_dir: Path, platform_url: str,
                     subject_token: str, camera: str) -> SampleApp:
    """Start the app process (stopped when ``stack`` closes) and wait until it answers."""
    from umec.localserver import free_port
    token_file = work / "classifier-app" / "token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(subject_token)
    token_file.chmod(0o600)
    port = free_port()
    env = {**os.environ, "UMEC_TOKEN_ENDPOINT": f"{platform_url}/oauth2/token",
           "UMEC_API_URL": platform_url, "UMEC_SUBJECT_TOKEN_FILE": str(token_file),
           "APP_CAMERA": camera, "APP_LISTEN_HOST": "127.0.0.1", "APP_LISTEN_PORT": str(port)}
    log = log_dir / "classifier-app.log"
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "umec_examples.classifier_app"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    stack.callback(_stop, process)
    app = SampleApp(f"http://127.0.0.1:{port}", log)
    _wait_ready(app, process)
    return app


def _wait_ready(app: SampleApp, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{app.url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the sample app did not start (exit {process.poll()}); see {app.log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def show_classification(app: SampleApp, expect: Callable[[bool, str], None],
                        print_line: Callable[[str], None]) -> None:
    status, body = app.classify()
    expect(status == 200 and body.get("label") == "espresso",
           f"the sample app (its own process, its own token) classified the camera's "
           f"picture: {body.get('label') or body.get('check')} {body.get('score', 0):.2f}")
    print_line(f"  sample app: {app.url}/ (open it in a browser on this machine while the demo "
               f"runs; the browser never holds a platform token)")


def show_refusal(app: SampleApp, expect: Callable[[bool, str], None]) -> None:
    """After its node failed attestation: the app's page shows a named refusal, not a trace."""
    status, body = app.classify()
    expect(status in (502, 503) and str(body.get("check", "")).startswith("app.")
           and "Traceback" not in str(body),
           f"the sample app now shows {status} {body.get('check')}: {body.get('detail')}")
