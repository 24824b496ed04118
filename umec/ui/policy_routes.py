"""The dashboard's policy routes: a node class's reference values, set (YAML or a signed DSSE
envelope) or rolled back through attest's operator functions, the same as ``umec policy
set|rollback`` and ``POST /attest/v1/policies``.

Every POST checks the session's CSRF token before anything else. The document is bounded at the
operator API's :data:`MAX_POLICY_DOCUMENT` (the whole ``/ui`` body at the server's 1 MiB
default). A refusal (an unsigned document when UMEC_POLICY_SIGNERS is set, a wrong signer, a
rollback below the applied version...) renders the page again with its check, detail and hint;
the service records it in the class's history as it does for the CLI.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from attest.core.policy import POLICY_NAME_PATTERN
from attest.service import operator
from attest.service.operator_api import MAX_POLICY_DOCUMENT
from attest.service.policies import PolicyTrust
from kernel.errors import CheckedError
from umec.ui import policy_pages
from umec.ui.routes import _csrf, _sources, log_refusal
from umec.ui.session import UiRefused, check_csrf

router = APIRouter()
FormField = Annotated[str, Form()]
CLASS_NAME = re.compile(POLICY_NAME_PATTERN.strip("^$"))


class PolicyDocumentRefused(UiRefused):
    check = "ui.policy_document"
    status = 400
    hint = ("Paste a policy's YAML or its DSSE envelope (umec policy sign), or upload the file; "
            f"at most {MAX_POLICY_DOCUMENT // 1024} KiB.")


class PolicyDocumentTooLarge(PolicyDocumentRefused):
    status = 413


def _trust(request: Request) -> PolicyTrust:
    config = _sources(request).attest.config
    return PolicyTrust(config.policy_signers, config.policy_threshold)


def _trust_view(trust: PolicyTrust) -> dict[str, Any]:
    return {"enforced": trust.enforced, "signers": len(trust.signers),
            "threshold": trust.threshold}


def _class_name(name: str) -> str:
    if CLASS_NAME.fullmatch(name) is None:
        raise operator.PolicyNotFound(f"no policy {name[:140]!r}")
    return name


def _view(request: Request, name: str) -> dict[str, Any]:
    sessions = _sources(request).attest.sessions
    shown = operator.policy_show(sessions, _class_name(name))
    return {**shown, "history": operator.policy_history(sessions, name)}


def _document(upload: UploadFile | None, pasted: str) -> bytes:
    """The uploaded file's bytes, else the pasted text's; bounded and not empty."""
    raw = upload.file.read(MAX_POLICY_DOCUMENT + 1) if upload is not None else b""
    if not raw:
        raw = pasted.encode()
    if len(raw) > MAX_POLICY_DOCUMENT:
        raise PolicyDocumentTooLarge(f"the document is over {MAX_POLICY_DOCUMENT} bytes")
    if not raw.strip():
        raise PolicyDocumentRefused("no document was uploaded or pasted")
    return raw


@router.get("/policies")
def policies_page(request: Request) -> Response:
    csrf = _csrf(request)
    rows = operator.policy_list(_sources(request).attest.sessions)
    return HTMLResponse(policy_pages.policies_page(rows, _trust_view(_trust(request)), csrf))


@router.get("/policies/{name}")
def policy_page(request: Request, name: str) -> Response:
    csrf = _csrf(request)
    return HTMLResponse(policy_pages.policy_page(_view(request, name),
                                                 _trust_view(_trust(request)), csrf))


def _refused_list(request: Request, csrf: str, err: CheckedError) -> Response:
    log_refusal(request, err)
    rows = operator.policy_list(_sources(request).attest.sessions)
    return HTMLResponse(policy_pages.policies_page(rows, _trust_view(_trust(request)), csrf,
                                                   err), status_code=err.status)


@router.post("/policies")
def set_policy(request: Request, csrf: FormField = "", document: FormField = "",
               file: Annotated[UploadFile | None, File()] = None) -> Response:
    check_csrf(_csrf(request), csrf)
    try:
        applied = operator.apply_policy(_sources(request).attest.sessions,
                                        _document(file, document), _trust(request))
    except CheckedError as err:
        return _refused_list(request, csrf, err)
    return RedirectResponse(f"/ui/policies/{applied['class']}", status_code=303)


@router.post("/policies/{name}/rollback")
def rollback_policy(request: Request, name: str, csrf: FormField = "",
                    to: FormField = "") -> Response:
    check_csrf(_csrf(request), csrf)
    view = _view(request, name)
    trust = _trust(request)
    sessions = _sources(request).attest.sessions
    try:
        if not to.isdigit() or len(to) > 9:
            raise PolicyDocumentRefused(f"roll back to {to[:20]!r}: not a version number")
        back = operator.rollback_document(sessions, name, int(to), trust)
        if back["must_sign"]:
            return HTMLResponse(policy_pages.policy_page(view, _trust_view(trust), csrf,
                                                         to_sign=str(back["document"])))
        operator.apply_policy(sessions, str(back["document"]).encode(), trust)
    except CheckedError as err:
        log_refusal(request, err)
        return HTMLResponse(policy_pages.policy_page(_view(request, name), _trust_view(trust),
                                                     csrf, err), status_code=err.status)
    return RedirectResponse(f"/ui/policies/{name}", status_code=303)


__all__ = ["router"]
