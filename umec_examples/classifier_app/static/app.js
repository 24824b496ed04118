// The classifier page: one button, one POST to the app's own server. Values go into the page
// as text only (textContent), never as HTML; the picture only as a data: JPEG.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);

  function show(which) {
    $("result").hidden = which !== "result";
    $("problem").hidden = which !== "problem";
  }

  function showProblem(body, status) {
    const known = body && typeof body.check === "string";
    $("problem-check").textContent = known ? body.check : "app.unavailable";
    $("problem-detail").textContent = known ? String(body.detail) : "the app answered HTTP " + status;
    $("problem-hint").textContent = known ? String(body.hint) : "retry in a moment";
    show("problem");
  }

  function showResult(body) {
    $("label").textContent = String(body.label);
    $("score").textContent = (Number(body.score) * 100).toFixed(1) + " %";
    const picture = String(body.picture || "");
    if (picture.startsWith("data:image/jpeg;base64,")) {
      $("picture").src = picture;
    }
    const others = $("others");
    others.replaceChildren();
    for (const other of body.others || []) {
      const item = document.createElement("li");
      item.textContent = String(other.label) + " " + (Number(other.score) * 100).toFixed(1) + " %";
      others.appendChild(item);
    }
    show("result");
  }

  async function shoot() {
    const button = $("shoot");
    button.disabled = true;
    $("status").textContent = "Taking a picture …";
    try {
      const answer = await fetch("/api/classify", {
        method: "POST", headers: {"X-Classifier-App": "1"}, credentials: "same-origin",
      });
      let body = null;
      try { body = await answer.json(); } catch (e) { body = null; }
      if (answer.ok && body) { showResult(body); } else { showProblem(body, answer.status); }
      $("status").textContent = "";
    } catch (e) {
      showProblem(null, "(network error)");
      $("status").textContent = "";
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => $("shoot").addEventListener("click", shoot));
})();
