"""The dashboard's HTML: small render functions, every value passed through :func:`esc`.

No template engine (Jinja2 is not a dependency of the project) and no inline script or style:
the page's only script and stylesheet are ``/ui/static/dashboard.{js,css}``, and what the script
needs (the URL to poll, the CSRF token) travels in ``data-`` attributes. State colours come
from a fixed set of CSS classes; a state outside it gets ``state-other``, never its own name.
"""

from __future__ import annotations

import html
from typing import Any

from kernel.errors import CheckedError

# The dashboard's pages, in the order of the navigation bar (admission, tokens and sensors
# slot in here as they are built).
PAGES: tuple[tuple[str, str], ...] = (("/ui/", "Fleet"), ("/ui/admission", "Admission"),
                                      ("/ui/tokens", "Tokens"), ("/ui/sensors", "Sensors"),
                                      ("/ui/policies", "Policies"))
STATES = frozenset({"trusted", "untrusted", "stale", "enrolled", "removed"})


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def state_badge(state: str) -> str:
    css = state if state in STATES else "other"
    return f'<span class="state state-{css}" data-state="{esc(state)}">{esc(state)}</span>'


def age_text(seconds: float | None) -> str:
    """``12 s``, ``4 min``, ``3 h``, ``2 d`` ago; ``never`` (the page's script says the same)."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _nav(csrf: str | None) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for href, label in PAGES)
    logout = "" if csrf is None else (
        '<form method="post" action="/ui/logout" class="logout">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        '<button type="submit">Log out</button></form>')
    return f'<header><strong>µMEC Trust</strong><nav>{links}</nav>{logout}</header>'


def page(title: str, body: str, *, csrf: str | None = None, poll: str | None = None) -> str:
    """A whole document; ``poll`` is the JSON URL the script refreshes the page from."""
    attrs = f' data-poll="{esc(poll)}"' if poll else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)} · µMEC Trust</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/ui/static/dashboard.css">'
            '<script src="/ui/static/dashboard.js" defer></script></head>'
            f"<body{attrs}>{_nav(csrf)}<main>"
            '<p id="live" class="live" role="status"></p>'
            f"{body}</main></body></html>")


def login_page(nonce: str, error: CheckedError | None = None) -> str:
    problem = "" if error is None else (
        f'<p class="error" id="login-error">{esc(error.check)}: {esc(error.detail)}'
        f" — {esc(error.hint)}</p>")
    return page("Log in", (
        "<h1>Log in</h1>"
        f"{problem}"
        '<form method="post" action="/ui/login" class="login">'
        f'<input type="hidden" name="csrf" value="{esc(nonce)}">'
        '<label for="token">Operator token</label>'
        '<input type="password" id="token" name="token" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Log in</button></form>'))


def failed_list(checks: list[dict[str, str]]) -> str:
    if not checks:
        return '<span class="none">none</span>'
    items = "".join(
        f'<li><code class="check">{esc(c["check"])}</code> '
        f'<span class="detail">{esc(c["detail"])}</span>'
        f'<div class="hint">what to do: {esc(c["hint"])}</div></li>' for c in checks)
    return f'<ul class="failed">{items}</ul>'


def _fleet_row(row: dict[str, Any]) -> str:
    name = esc(row["name"])
    return (f'<tr data-node="{name}">'
            f'<td><a href="/ui/nodes/{name}">{name}</a></td>'
            f'<td class="state-cell">{state_badge(row["state"])}</td>'
            f'<td>{esc(row["node_class"])}</td>'
            f'<td class="age">{esc(age_text(row["evidence_age"]))}</td>'
            f'<td class="checks">{failed_list(row["failed_checks"])}</td></tr>')


FAILING = ("untrusted", "stale")


def _attention_item(row: dict[str, Any]) -> str:
    """One line: the node, its state, its first failed check and what to do."""
    name = esc(row["name"])
    first = row["failed_checks"][0] if row["failed_checks"] else None
    why = ("no evidence within its interval" if first is None else
           f'<code class="check">{esc(first["check"])}</code> '
           f'<span class="hint">what to do: {esc(first["hint"])}</span>')
    more = len(row["failed_checks"]) - 1
    extra = f' <span class="hint">(+{more} more)</span>' if more > 0 else ""
    return (f'<li data-node="{name}"><a href="/ui/nodes/{name}">{name}</a> is '
            f'{state_badge(row["state"])} {why}{extra}</li>')


def attention(rows: list[dict[str, Any]]) -> str:
    """The fleet page's first line: which nodes are failing and why, or that none is (the
    page's script rebuilds it the same way)."""
    failing = [r for r in rows if r["state"] in FAILING]
    if not failing:
        return (f'<div class="attention attention-ok" id="fleet-attention">No node failing: '
                f"{len(rows)} nodes, none untrusted or stale.</div>")
    items = "".join(_attention_item(r) for r in failing)
    return (f'<div class="attention" id="fleet-attention"><strong>{len(failing)} of '
            f"{len(rows)} nodes failing</strong><ul>{items}</ul></div>")


def fleet_page(rows: list[dict[str, Any]], csrf: str, flash: str | None = None,
               charts: str = "") -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items())) or "no nodes"
    note = "" if flash is None else f'<p class="flash">{esc(flash)}</p>'
    body = (f"<h1>Fleet</h1>{note}{attention(rows)}"
            f'<p class="summary" id="fleet-summary">{len(rows)} nodes: {summary}</p>'
            '<table id="fleet"><thead><tr><th>node</th><th>state</th><th>class</th>'
            "<th>last evidence</th><th>failed checks and what to do</th></tr></thead>"
            f'<tbody>{"".join(_fleet_row(r) for r in rows)}</tbody></table>{charts}')
    return page("Fleet", body, csrf=csrf, poll="/ui/api/fleet")


def _events(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="none">no state changes recorded</p>'
    rows = "".join(
        f'<tr><td>{esc(e["at"])}</td><td>{esc(e["previous"] or "—")}</td>'
        f'<td>{state_badge(e["state"])}</td><td>{esc(", ".join(e["failed_checks"]))}</td>'
        f'<td>{esc(e["reason"])}</td></tr>' for e in events)
    return ('<table id="events"><thead><tr><th>at</th><th>from</th><th>to</th>'
            f"<th>failed checks</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>")


def _pcr_cell(row: dict[str, Any]) -> str:
    if row["reported"] is None:
        return '<td class="none">not recorded</td>'
    css = {True: "match", False: "mismatch", None: "unpinned"}[row["matches"]]
    return f'<td class="{css}"><code>{esc(row["reported"])}</code></td>'


def _pcrs(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="none">the node class has no appraisal policy</p>'
    body = "".join(
        f'<tr><td>{esc(r["bank"])}:{esc(r["index"])}</td>'
        f'<td>{"<br>".join(f"<code>{esc(v)}</code>" for v in r["reference"]) or "any"}</td>'
        f"{_pcr_cell(r)}</tr>" for r in rows)
    return ('<table id="pcrs"><thead><tr><th>PCR</th><th>reference values (policy)</th>'
            "<th>last passing quote</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
            '<p class="note">A quote that fails is not kept; its mismatches are in the failed '
            "checks above.</p>")


def _revocations(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="none">no token revocations kept for this node</p>'
    body = "".join(
        f'<tr><td>{esc(r["at"])}</td><td>{esc(r["through_epoch"])}</td>'
        f'<td>{esc(r["reason"])}</td><td>{esc(r["kept_until"])}</td></tr>' for r in rows)
    return ('<table id="revocations"><thead><tr><th>at</th><th>epochs up to</th>'
            f"<th>reason</th><th>kept until</th></tr></thead><tbody>{body}</tbody></table>")


def _action(name: str, action: str, label: str, csrf: str) -> str:
    return (f'<form method="post" action="/ui/nodes/{esc(name)}/{action}" class="action">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
            f'<button type="submit" id="{action}">{esc(label)}</button></form>')


def node_page(node: dict[str, Any], csrf: str) -> str:
    name = node["name"]
    verdict = ("no evidence yet" if not node["has_verdict"] else
               f'{"passed" if node["trusted_verdict"] else "failed"} at {node["verdict_at"]}')
    body = (
        f'<h1>Node <span id="node-name">{esc(name)}</span></h1>'
        f'<p class="facts">state <span id="node-state">{state_badge(node["state"])}</span> '
        f'since {esc(node["state_changed_at"])} · class <span id="node-class">'
        f'<a href="/ui/policies/{esc(node["node_class"])}">{esc(node["node_class"])}</a>'
        f'</span> · last evidence '
        f'<span class="age">{esc(age_text(node["evidence_age"]))}</span> · last pass '
        f'{esc(node["last_pass_at"] or "never")}</p>'
        f'<div class="actions">{_action(name, "ack", "Acknowledge", csrf)}'
        f'{_action(name, "remove", "Remove (revokes its tokens)", csrf)}</div>'
        f"<h2>Last verdict: {esc(verdict)}</h2>"
        f'<div id="node-checks">{failed_list(node["failed_checks"])}</div>'
        f"<h2>PCR values against the policy</h2>{_pcrs(node['pcrs'])}"
        f'<p class="note"><a href="/ui/policies/{esc(node["node_class"])}" id="policy-link">'
        "Set or roll back this class's reference values</a></p>"
        f"<h2>State history</h2>{_events(node['events'])}"
        f"<h2>Token revocations it caused</h2>{_revocations(node['revocations'])}")
    return page(f"Node {name}", body, csrf=csrf, poll=f"/ui/api/nodes/{name}")


def error_page(err: CheckedError, csrf: str | None = None) -> str:
    return page("Refused", (
        f'<h1>Refused</h1><p class="error" id="problem"><code>{esc(err.check)}</code> '
        f"{esc(err.detail)}</p><p>what to do: {esc(err.hint)}</p>"
        '<p><a href="/ui/">back to the fleet</a></p>'), csrf=csrf)
