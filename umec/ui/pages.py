"""The Admission, Tokens and Sensors pages (issue 14): render functions over the dicts of
:mod:`umec.ui.data`, every value through :func:`umec.ui.render.esc`, charts from
:mod:`umec.ui.charts`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from umec.ui import charts
from umec.ui.data import failed_checks_by_type
from umec.ui.render import age_text, esc, page

HOURS = (1, 6, 24, 168)


def fleet_charts(rows: list[dict[str, Any]], rounds: list[tuple[str, int]]) -> str:
    """The fleet page's charts: this process's evidence rounds per minute (an in-memory ring
    fed where the rounds counter is incremented: other replicas' rounds are not in it) and
    the failed checks of the nodes' last verdicts by check id."""
    return ('<h2>Rounds and failures</h2><div class="charts" id="fleet-charts">'
            + charts.bars("evidence rounds per minute (last 60 min, UTC; this server process "
                          "only)", rounds, "chart-rounds")
            + charts.bars("failed checks by type (nodes' last verdicts)",
                          failed_checks_by_type(rows), "chart-denied")
            + "</div>")


def _signers(signers: list[str]) -> str:
    return ", ".join(f"<code>{esc(s)}</code>" for s in signers) or '<span class="none">none</span>'


def _failed(failed: list[dict[str, str]]) -> str:
    if not failed:
        return '<span class="none">—</span>'
    return "<br>".join(f'<code class="check">{esc(f.get("check"))}</code> '
                       f'<span class="detail">{esc(f.get("detail"))}</span>' for f in failed)


def denial_rows(denials: list[dict[str, Any]]) -> str:
    rows = []
    for d in denials:
        containers = d.get("containers") or [{"path": "", "image": "", "digest": None,
                                              "signers": [], "failed": []}]
        for c in containers:
            rows.append(
                f'<tr class="denied-row" data-pod="{esc(d["name"])}">'
                f'<td>{esc(d["at"])}</td><td>{esc(d["namespace"])}</td>'
                f'<td class="pod">{esc(d["name"])} <span class="hint">{esc(d["kind"])} '
                f'{esc(d["operation"])}</span></td>'
                f'<td>{esc(c.get("path"))}</td><td class="image"><code>{esc(c.get("image"))}'
                f'</code></td><td><code>{esc(c.get("digest") or "—")}</code></td>'
                f'<td>{_signers(c.get("signers") or [])}</td>'
                f'<td class="checks">{_failed(c.get("failed") or [])}</td></tr>')
    return "".join(rows)


def admission_rows(admissions: list[dict[str, Any]]) -> str:
    rows = []
    for a in admissions:
        for i in a.get("images") or []:
            rows.append(
                f'<tr data-pod="{esc(a["name"])}"><td>{esc(a["at"])}</td>'
                f'<td>{esc(a["namespace"])}</td><td class="pod">{esc(a["name"])}</td>'
                f'<td>{esc(i.get("path"))}</td><td class="image"><code>{esc(i.get("image"))}'
                f'</code></td><td><code>{esc(i.get("digest"))}</code></td>'
                f'<td>{_signers(i.get("signers") or [])}</td>'
                f'<td>{"<span class=ok>verified</span>" if a["verified"] else "not verified"}'
                "</td></tr>")
    return "".join(rows)


_HEAD = ("<th>at</th><th>namespace</th><th>pod</th><th>container</th><th>image</th>"
         "<th>digest</th><th>signers</th>")


def admission_page(view: dict[str, Any], csrf: str) -> str:
    ns = view["namespace"] or ""
    query = f"?namespace={esc(ns)}" if ns else ""
    failed_chart = charts.bars("failed checks by type (recent denials)",
                               view["failed_by_check"], "chart-denied")
    body = (
        "<h1>Admission</h1>"
        '<form method="get" action="/ui/admission" class="filter">'
        '<label for="namespace">namespace</label>'
        f'<input id="namespace" name="namespace" value="{esc(ns)}" '
        'pattern="[a-z0-9]([-a-z0-9]*[a-z0-9])?" maxlength="63">'
        '<button type="submit">Filter</button> <a href="/ui/admission">all</a></form>'
        '<div class="charts">'
        f'{charts.bars("admissions per hour (last 24 h, UTC)", view["per_hour"])}'
        f"{failed_chart}"
        "</div>"
        f'<h2>Denials <span class="hint" id="denial-count">{len(view["denials"])}</span></h2>'
        f'<table id="denials"><thead><tr>{_HEAD}<th>failed check</th></tr></thead>'
        f'<tbody>{denial_rows(view["denials"])}</tbody></table>'
        "<h2>Admitted pods</h2>"
        f'<table id="admissions"><thead><tr>{_HEAD}<th>verdict</th></tr></thead>'
        f'<tbody>{admission_rows(view["admissions"])}</tbody></table>')
    return page("Admission", body, csrf=csrf, poll=f"/ui/api/admission{query}")


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "—"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _workload_rows(rows: list[dict[str, Any]]) -> str:
    return "".join(
        f'<tr><td>{esc(r["workload"])}</td><td>{esc(r["node"])}</td>'
        f'<td class="issued-all">{esc(r["issued_all"])}</td>'
        f'<td>{esc(r["issued"])}</td><td>{esc(r["live"])}</td><td>{esc(r["revoked"])}</td>'
        f'<td>{esc("; ".join(r["why"]))}</td><td>{esc(_when(r["last_issued"]))}</td></tr>'
        for r in rows)


def _revocation_rows(rows: list[dict[str, Any]]) -> str:
    def what(r: dict[str, Any]) -> str:
        if r["kind"] == "node":
            return f"node {r['node']}, trust epochs up to {r['node_epoch']}"
        if r["kind"] == "pod":
            return f"pod {r['pod_uid']}"
        return f"token {r['jti']}"
    return "".join(f'<tr><td>{esc(r["kind"])}</td><td>{esc(what(r))}</td>'
                   f'<td>{esc(r["expires_at"])}</td></tr>' for r in rows)


def tokens_page(view: dict[str, Any], csrf: str) -> str:
    age = view["feed_age"]
    healthy = age is not None and age <= view.get("max_feed_age", 1.0)
    health = (f'<span class="{"ok" if healthy else "error"}" id="feed-health">'
              f'{"current" if healthy else "behind"}</span> · last read '
              f'<span id="feed-age">{esc("never" if age is None else f"{age:.2f} s ago")}</span>'
              f' (resource servers refuse tokens when it is older than '
              f'{esc(view.get("max_feed_age", 1.0))} s) · generation '
              f'{esc(view["generation"])}')
    body = (
        "<h1>Tokens</h1>"
        f'<p class="facts">Revocation feed: {health}</p>'
        "<h2>Issued per workload and node</h2>"
        '<p class="note">Issued in the last 24 h: every server and worker (each adds its '
        "counts every 10 s). This server: its newest 5000 tokens since it started (tokens live "
        "5 min at most), how many are still live, and how many were revoked while live.</p>"
        '<table id="workloads"><thead><tr><th>workload</th><th>node</th>'
        "<th>issued, 24 h (all servers)</th><th>issued here</th><th>live here</th>"
        "<th>revoked here</th><th>why revoked</th><th>last issued here</th></tr></thead>"
        f'<tbody>{_workload_rows(view["workloads"])}</tbody></table>'
        "<h2>Revocations in force</h2>"
        '<table id="token-revocations"><thead><tr><th>kind</th><th>revokes</th>'
        "<th>kept until</th></tr></thead>"
        f'<tbody>{_revocation_rows(view["revocations"])}</tbody></table>')
    return page("Tokens", body, csrf=csrf)


def _latest_rows(rows: list[dict[str, Any]], now: datetime) -> str:
    out = []
    for r in rows:
        age = (now - datetime.fromisoformat(r["at"])).total_seconds()
        out.append(
            f'<tr data-tag="{esc(r["mac"])}"><td><a href="/ui/sensors?tag={esc(r["mac"])}">'
            f'{esc(r["mac"])}</a></td><td>{esc(age_text(max(age, 0.0)))}</td>'
            f'<td>{esc(r["temperature_c"])} °C</td><td>{esc(r["humidity_pct"])} %RH</td>'
            f'<td>{esc(r["pressure_pa"])} Pa</td><td>{esc(r["battery_v"])} V</td>'
            f'<td>{esc(r["movement_counter"])}</td><td>{esc(r["rssi"])} dBm</td></tr>')
    return "".join(out)


def sensors_page(view: dict[str, Any], now: datetime, csrf: str) -> str:
    tag, hours = view["tag"], view["hours"]
    ranges = " ".join(
        f'<a href="/ui/sensors?tag={esc(tag or "")}&amp;hours={h}"'
        f'{" class=current" if h == hours else ""}>{h} h</a>' for h in HOURS)
    series = view["series"]
    first = datetime.fromtimestamp(series[0][0], UTC).strftime("%m-%d %H:%M") if series else ""
    last = datetime.fromtimestamp(series[-1][0], UTC).strftime("%m-%d %H:%M") if series else ""
    chart = charts.line(f"temperature of {tag or 'no tag'} over the last {hours} h (UTC)",
                        series, first, last, "°C")
    body = (
        "<h1>Sensors</h1>"
        "<h2>Latest Ruuvi readings</h2>"
        '<table id="latest"><thead><tr><th>tag</th><th>measured</th><th>temperature</th>'
        "<th>humidity</th><th>pressure</th><th>battery</th><th>movements</th><th>RSSI</th>"
        f'</tr></thead><tbody>{_latest_rows(view["latest"], now)}</tbody></table>'
        f'<h2>Over time</h2><p class="filter">range: {ranges}</p>'
        f'<div class="charts" id="sensor-chart">{chart}</div>')
    return page("Sensors", body, csrf=csrf)
