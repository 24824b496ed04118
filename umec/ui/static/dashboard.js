// µMEC Trust dashboard: refreshes the page's live parts from the JSON URL in <body data-poll>
// every 2 s. Every value goes in with textContent or an attribute, never as HTML.
"use strict";
(function () {
  var STATES = ["trusted", "untrusted", "stale", "enrolled", "removed"];
  var POLL_MS = 2000;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) { return "never"; }
    var units = [["d", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) { return Math.floor(seconds / units[i][1]) + " " + units[i][0] + " ago"; }
    }
    return Math.floor(seconds) + " s ago";
  }

  function badge(state) {
    var css = STATES.indexOf(state) >= 0 ? state : "other";
    var span = el("span", "state state-" + css, state);
    span.setAttribute("data-state", state);
    return span;
  }

  function failedList(checks) {
    if (!checks || checks.length === 0) { return el("span", "none", "none"); }
    var ul = el("ul", "failed");
    checks.forEach(function (c) {
      var li = el("li");
      li.appendChild(el("code", "check", c.check));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "detail", c.detail));
      li.appendChild(el("div", "hint", "what to do: " + c.hint));
      ul.appendChild(li);
    });
    return ul;
  }

  function replace(parent, child) {
    while (parent.firstChild) { parent.removeChild(parent.firstChild); }
    parent.appendChild(child);
  }

  function fleetRow(node) {
    var tr = el("tr");
    tr.setAttribute("data-node", node.name);
    var name = el("td"), link = el("a", null, node.name);
    link.setAttribute("href", "/ui/nodes/" + encodeURIComponent(node.name));
    name.appendChild(link);
    tr.appendChild(name);
    var state = el("td", "state-cell");
    state.appendChild(badge(node.state));
    tr.appendChild(state);
    tr.appendChild(el("td", null, node.node_class));
    tr.appendChild(el("td", "age", age(node.evidence_age)));
    var checks = el("td", "checks");
    checks.appendChild(failedList(node.failed_checks));
    tr.appendChild(checks);
    return tr;
  }

  var FAILING = ["untrusted", "stale"];

  // The page's first line, as render.attention builds it: which nodes fail and why.
  function attention(nodes) {
    var failing = nodes.filter(function (n) { return FAILING.indexOf(n.state) >= 0; });
    var box = el("div", failing.length ? "attention" : "attention attention-ok");
    box.id = "fleet-attention";
    if (!failing.length) {
      box.textContent = "No node failing: " + nodes.length + " nodes, none untrusted or stale.";
      return box;
    }
    box.appendChild(el("strong", null, failing.length + " of " + nodes.length + " nodes failing"));
    var ul = el("ul");
    failing.forEach(function (n) {
      var li = el("li"), link = el("a", null, n.name), first = (n.failed_checks || [])[0];
      li.setAttribute("data-node", n.name);
      link.setAttribute("href", "/ui/nodes/" + encodeURIComponent(n.name));
      li.appendChild(link);
      li.appendChild(document.createTextNode(" is "));
      li.appendChild(badge(n.state));
      li.appendChild(document.createTextNode(" "));
      if (!first) {
        li.appendChild(document.createTextNode("no evidence within its interval"));
      } else {
        li.appendChild(el("code", "check", first.check));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("span", "hint", "what to do: " + first.hint));
        if (n.failed_checks.length > 1) {
          li.appendChild(el("span", "hint", " (+" + (n.failed_checks.length - 1) + " more)"));
        }
      }
      ul.appendChild(li);
    });
    box.appendChild(ul);
    return box;
  }

  // The fleet's charts from the JSON, as umec/ui/charts.py's bars() draws them.
  var SVG = "http://www.w3.org/2000/svg", W = 480, H = 140, PAD = 24;

  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }

  function drawBars(svg, data) {
    var keep = svg.querySelector("title");
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    if (keep) { svg.appendChild(keep); }
    var top = Math.max.apply(null, [0].concat(data.map(function (d) { return d[1]; })));
    if (!data.length || top <= 0) {
      svg.appendChild(svgEl("text", { "class": "chart-empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "nothing yet"));
      return;
    }
    var width = (W - 2 * PAD) / data.length, every = Math.max(1, Math.floor(data.length / 12));
    svg.appendChild(svgEl("line", { "class": "chart-axis", x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD }));
    svg.appendChild(svgEl("text", { "class": "chart-label", x: 2, y: PAD - 8 }, top));
    data.forEach(function (d, i) {
      var h = (H - 2 * PAD) * d[1] / top, x = PAD + i * width;
      var bar = svgEl("rect", { "class": "chart-bar", x: (x + 1).toFixed(1), y: (H - PAD - h).toFixed(1),
                                width: Math.max(width - 2, 1).toFixed(1), height: h.toFixed(1) });
      bar.appendChild(svgEl("title", {}, d[0] + ": " + d[1]));
      svg.appendChild(bar);
      if (i % every === 0) {
        svg.appendChild(svgEl("text", { "class": "chart-label", x: (x + width / 2).toFixed(1), y: H - 8,
                                        "text-anchor": "middle" }, String(d[0]).slice(0, Math.max(14, Math.floor(width / 7)))));
      }
    });
  }

  function showCharts(charts) {
    Object.keys(charts || {}).forEach(function (css) {
      var svg = document.querySelector("#fleet-charts ." + css + " svg");
      if (svg) { drawBars(svg, charts[css]); }
    });
  }

  function showFleet(body) {
    showCharts(body.charts);
    var box = document.getElementById("fleet-attention");
    if (box) { box.parentNode.replaceChild(attention(body.nodes), box); }
    var tbody = document.querySelector("#fleet tbody");
    if (!tbody) { return; }
    var rows = document.createDocumentFragment(), counts = {};
    body.nodes.forEach(function (node) {
      rows.appendChild(fleetRow(node));
      counts[node.state] = (counts[node.state] || 0) + 1;
    });
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    tbody.appendChild(rows);
    var parts = Object.keys(counts).sort().map(function (s) { return counts[s] + " " + s; });
    var summary = document.getElementById("fleet-summary");
    if (summary) { summary.textContent = body.nodes.length + " nodes: " + (parts.join(", ") || "no nodes"); }
  }

  function showNode(node) {
    var state = document.getElementById("node-state");
    if (state) { replace(state, badge(node.state)); }
    var checks = document.getElementById("node-checks");
    if (checks) { replace(checks, failedList(node.failed_checks)); }
    var ages = document.querySelectorAll(".facts .age");
    for (var i = 0; i < ages.length; i++) { ages[i].textContent = age(node.evidence_age); }
  }

  function cell(tr, cls, text, code) {
    var td = el("td", cls);
    if (code) { td.appendChild(el("code", null, text)); } else { td.textContent = text; }
    tr.appendChild(td);
    return td;
  }

  function denialRow(d, c) {
    var tr = el("tr", "denied-row");
    tr.setAttribute("data-pod", d.name);
    cell(tr, null, d.at);
    cell(tr, null, d.namespace);
    var pod = cell(tr, "pod", d.name + " ");
    pod.appendChild(el("span", "hint", d.kind + " " + d.operation));
    cell(tr, null, c.path || "");
    cell(tr, "image", c.image || "", true);
    cell(tr, null, c.digest || "\u2014", true);
    cell(tr, null, (c.signers || []).join(", ") || "none");
    var checks = cell(tr, "checks", "");
    (c.failed || []).forEach(function (f, i) {
      if (i > 0) { checks.appendChild(el("br")); }
      checks.appendChild(el("code", "check", f.check));
      checks.appendChild(document.createTextNode(" "));
      checks.appendChild(el("span", "detail", f.detail));
    });
    return tr;
  }

  function showDenials(body) {
    var tbody = document.querySelector("#denials tbody");
    if (!tbody) { return; }
    var rows = document.createDocumentFragment();
    body.denials.forEach(function (d) {
      var containers = d.containers && d.containers.length ? d.containers : [{}];
      containers.forEach(function (c) { rows.appendChild(denialRow(d, c)); });
    });
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    tbody.appendChild(rows);
    var count = document.getElementById("denial-count");
    if (count) { count.textContent = String(body.denials.length); }
  }

  function live(text, bad) {
    var status = document.getElementById("live");
    if (!status) { return; }
    status.textContent = text;
    status.className = bad ? "live live-bad" : "live";
  }

  function poll(url) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) { live("session ended: reload the page to log in again", true); return null; }
        if (!resp.ok) { live("live updates paused: the server answered " + resp.status, true); return null; }
        return resp.json();
      })
      .then(function (body) {
        if (!body) { return; }
        if (body.nodes) { showFleet(body); } else if (body.denials) { showDenials(body); } else { showNode(body); }
        live("live · updated " + new Date().toLocaleTimeString(), false);
      })
      .catch(function () { live("live updates paused: the server cannot be reached", true); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var url = document.body.getAttribute("data-poll");
    if (!url) { return; }
    window.setInterval(function () { poll(url); }, POLL_MS);
  });
})();
