"""The Policies pages (issue 14): a node class's reference values, their history, and the
forms that set a new policy (YAML or a signed DSSE envelope) or roll back to an applied
version. Render functions over plain dicts; every value through :func:`esc`."""

from __future__ import annotations

from typing import Any

from kernel.errors import CheckedError
from umec.ui.render import esc, page


def _trust_note(trust: dict[str, Any]) -> str:
    if not trust["enforced"]:
        return ('<p class="note" id="policy-trust">This server accepts unsigned policies '
                "(no UMEC_POLICY_SIGNERS): a YAML document or a signed envelope.</p>")
    return ('<p class="note signed" id="policy-trust">This server enforces signed policies: '
            f'{esc(trust["threshold"])} of {esc(trust["signers"])} configured signers '
            "(UMEC_POLICY_SIGNERS) must sign. An unsigned YAML document is refused "
            "(<code>policy.unsigned</code>); upload a DSSE envelope made with "
            "<code>umec policy sign --key KEY FILE -o FILE.dsse.json</code>.</p>")


def _problem(err: CheckedError | None) -> str:
    if err is None:
        return ""
    return (f'<div class="error" role="alert" id="problem"><code>{esc(err.check)}</code> '
            f'{esc(err.detail)}<div class="hint">what to do: {esc(err.hint)}</div></div>')


def set_form(csrf: str, trust: dict[str, Any]) -> str:
    what = "signed envelope (.dsse.json)" if trust["enforced"] else "policy YAML or signed envelope"
    return (
        '<form method="post" action="/ui/policies" enctype="multipart/form-data" '
        'class="policy-set" id="policy-set">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<label for="policy-file">Upload a {esc(what)}</label>'
        '<input type="file" id="policy-file" name="file" accept=".yaml,.yml,.json">'
        '<label for="policy-paste">or paste it</label>'
        '<textarea id="policy-paste" name="document" rows="10" cols="80" '
        'spellcheck="false"></textarea>'
        '<button type="submit" id="policy-apply">Apply</button></form>')


def _list_rows(rows: list[dict[str, Any]]) -> str:
    return "".join(
        f'<tr data-class="{esc(r["class"])}"><td><a href="/ui/policies/{esc(r["class"])}">'
        f'{esc(r["class"])}</a></td><td>{esc(r["version"] if r["version"] is not None else "—")}'
        f'</td><td>{esc(r["generation"] if r["generation"] is not None else "—")}</td>'
        f'<td>{esc(r["updated"] or "—")}</td><td>{esc(r["source"])}</td></tr>' for r in rows)


def policies_page(rows: list[dict[str, Any]], trust: dict[str, Any], csrf: str,
                  error: CheckedError | None = None) -> str:
    body = (
        f"<h1>Policies</h1>{_problem(error)}"
        '<p class="note">A node class\'s reference values: what its nodes\' quotes are '
        "appraised against.</p>"
        '<table id="policies"><thead><tr><th>class</th><th>version</th><th>generation</th>'
        f"<th>updated</th><th>source</th></tr></thead><tbody>{_list_rows(rows)}</tbody></table>"
        f"<h2>Set a policy</h2>{_trust_note(trust)}{set_form(csrf, trust)}")
    return page("Policies", body, csrf=csrf)


def _history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="none">no policy events recorded</p>'
    body = "".join(
        f'<tr class="outcome-{"applied" if r["outcome"] == "applied" else "refused"}">'
        f'<td>{esc(r["at"])}</td><td>{esc(r["outcome"])}</td>'
        f'<td>{esc(r["version"] if r["version"] is not None else "—")}</td>'
        f'<td>{esc(", ".join(r["signers"]) or "unsigned")}</td>'
        f'<td><code>{esc(r["check"] or "")}</code> {esc(r["detail"] or "")}</td></tr>'
        for r in reversed(rows))
    return ('<table id="policy-history"><thead><tr><th>at</th><th>outcome</th><th>version</th>'
            f"<th>signers</th><th>detail</th></tr></thead><tbody>{body}</tbody></table>")


def _rollback(name: str, versions: list[int], csrf: str, trust: dict[str, Any]) -> str:
    if not versions:
        return '<p class="none">no applied version to go back to</p>'
    options = "".join(f'<option value="{v}">version {v}</option>' for v in versions)
    what = ("Prepare the document to sign (this server needs a signed envelope)"
            if trust["enforced"] else "Apply that version's content as a new version")
    return (f'<form method="post" action="/ui/policies/{esc(name)}/rollback" '
            'class="policy-rollback" id="policy-rollback">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<label for="rollback-to">Roll back to</label>'
            f'<select id="rollback-to" name="to">{options}</select>'
            f'<button type="submit" id="rollback">{esc(what)}</button></form>')


def _to_sign(document: str | None) -> str:
    if document is None:
        return ""
    return ('<div class="to-sign" id="to-sign"><h2>Sign this, then upload the envelope</h2>'
            '<p class="note">Save it as FILE.yaml and run <code>umec policy sign --key KEY '
            "FILE.yaml -o FILE.dsse.json</code> (as many keys as the threshold needs); "
            "nothing was applied.</p>"
            f'<pre id="rollback-document">{esc(document)}</pre></div>')


def policy_page(view: dict[str, Any], trust: dict[str, Any], csrf: str,
                error: CheckedError | None = None, to_sign: str | None = None) -> str:
    name = view["class"]
    versions = sorted({int(r["version"]) for r in view["history"]
                       if r["outcome"] == "applied" and r["version"] is not None}, reverse=True)
    body = (
        f'<h1>Policy <span id="policy-name">{esc(name)}</span></h1>{_problem(error)}'
        f'<p class="facts">version {esc(view["version"] if view["version"] is not None else "—")}'
        f' · generation {esc(view["generation"] if view["generation"] is not None else "—")}'
        f' · {esc(view["source"])}</p>'
        f"{_to_sign(to_sign)}"
        f'<h2>Reference values</h2><pre id="policy-document">{esc(view["document"])}</pre>'
        f"<h2>History</h2>{_history(view['history'])}"
        f"<h2>Roll back</h2>{_rollback(name, versions, csrf, trust)}"
        f"<h2>Set a new policy</h2>{_trust_note(trust)}{set_form(csrf, trust)}")
    return page(f"Policy {name}", body, csrf=csrf)
