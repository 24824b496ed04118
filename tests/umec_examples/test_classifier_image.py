"""The sample app's own image, umec-classifier-app (scripts/imagebuild): what the app imports
is in the ``classifier-app`` extra's closure, the committed lock pins that image for both
architectures without the platform's heavy wheels, and the image runs the app, not ``umec``.
Building, running and pushing it are by hand (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from scripts.imagebuild.build import IMAGES
from scripts.imagebuild.check import check_config
from scripts.imagebuild.errors import StepFailed
from scripts.imagebuild.lockfile import parse_lock
from tests.umec.test_image_build import REPO, _closure

# Imported by uvicorn, starlette, fastapi or pydantic only when installed (try/except ImportError):
# present in the development venv, absent from the image, whose --run check imports and serves
# the app without them (scripts/imagebuild/check.py).
OPTIONAL = {"watchfiles", "rich", "pygments", "email-validator", "python-multipart"}
HEAVY = {"onnxruntime", "opencv-python-headless", "sigstore", "numpy", "kubernetes",
         "sqlalchemy", "tpm2-pytss", "cryptography", "typer", "psycopg", "regopy"}


def app_extra() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["classifier-app"])


def test_the_app_imports_only_its_extra() -> None:
    from packaging.utils import canonicalize_name
    probe = ("import sys, json, importlib.metadata as m\n"
             "before = set(sys.modules)\n"
             "import umec_examples.classifier_app.__main__, httpx\n"
             "httpx.AsyncClient()\n"
             "dists = m.packages_distributions()\n"
             "print(json.dumps(sorted({d for mod in list(sys.modules) "
             "if mod not in before for d in dists.get(mod.split('.')[0], [])})))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=120)
    loaded = {canonicalize_name(d) for d in json.loads(proc.stdout)} - {"umec-trust"} - OPTIONAL
    allowed = _closure(app_extra())
    assert loaded <= allowed, f"not in the classifier-app extra: {sorted(loaded - allowed)}"
    assert {"fastapi", "uvicorn", "httpx"} <= loaded
    assert not allowed & HEAVY


def test_the_committed_lock_pins_the_app_image_slim() -> None:
    lock = parse_lock((REPO / "scripts" / "images.lock.json").read_text())
    for arch in ("amd64", "arm64"):
        pins = lock.pins("umec-classifier-app", arch)
        assert pins is not None and pins.debs and pins.wheels, arch
        wheels = {p.name for p in pins.wheels}
        assert {"fastapi", "uvicorn", "httpx", "starlette"} <= wheels
        assert not wheels & (HEAVY | OPTIONAL), arch


def test_the_image_runs_the_app() -> None:
    spec = IMAGES["umec-classifier-app"]
    assert spec.extra == "classifier-app" and not spec.tpm2 and not spec.policies
    assert spec.entrypoint == ("/usr/bin/python3.11", "-m", "umec_examples.classifier_app")
    config = {"architecture": "arm64", "os": "linux",
              "config": {"User": "10001:10001", "Entrypoint": list(spec.entrypoint)}}
    check_config(config, "arm64", spec.entrypoint)
    with pytest.raises(StepFailed, match=r"expected /usr/bin/python3\.11 -m"):
        check_config({**config, "config": {"User": "10001:10001",
                                           "Entrypoint": ["/usr/local/bin/umec"]}},
                     "arm64", spec.entrypoint)
    with pytest.raises(StepFailed, match="expected /usr/local/bin/umec"):
        check_config(config, "arm64")  # the platform images' entrypoint is still umec
