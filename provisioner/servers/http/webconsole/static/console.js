// The web console's live updates: stage events from /events (server-sent events) applied to
// the page in place. Text goes in through textContent only, never as markup.
"use strict";
(function () {
  const body = document.body;
  const live = document.getElementById("live");
  const view = body.dataset.view;
  if (!view || !window.EventSource) return;

  function cell(tr, cls) {
    return tr.querySelector("td." + cls);
  }

  // Counts, problems and discovered nodes cover every node, not just this page's rows: they
  // are fetched again (this page, as the server renders it) at most every few seconds.
  let pending = null;
  function refreshSummary() {
    if (pending) return;
    pending = setTimeout(function () {
      fetch(location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          const fresh = new DOMParser().parseFromString(html, "text/html");
          for (const id of ["summary", "problems", "discovered"]) {
            const now = document.getElementById(id), next = fresh.getElementById(id);
            if (now && next) now.replaceWith(document.adoptNode(next));
          }
        })
        .catch(function () {})
        .finally(function () { pending = null; });
    }, 2000);
  }

  function onCluster(ev) {
    refreshSummary();
    for (const tr of document.querySelectorAll("#node-table tr[data-node]")) {
      if (tr.dataset.node !== ev.node) continue;
      cell(tr, "stage").textContent = ev.stage;
      cell(tr, "since").textContent = "just now";
      cell(tr, "seen").textContent = "just now";
      tr.classList.add("changed");
    }
  }

  function onNode(ev) {
    if (ev.node !== body.dataset.node) return;
    const table = document.getElementById("timeline");
    const steps = table.querySelectorAll("tr.step");
    const last = steps.length ? steps[steps.length - 1].querySelector("td.stage").textContent : null;
    // A new boot starts the timeline again, as `status --timeline` does.
    if (ev.stage === "bootloader" || (ev.stage === "ipxe" && last !== "bootloader")) {
      steps.forEach(function (tr) { tr.remove(); });
    }
    const prev = table.querySelector("tr.step:last-of-type");
    if (prev && prev.dataset.at) {
      const took = ev.at - Number(prev.dataset.at);
      prev.querySelector("td.took").textContent = took < 120 ? took.toFixed(1) + "s" : (took / 60).toFixed(1) + "m";
    }
    const tr = document.createElement("tr");
    tr.className = "step changed";
    tr.dataset.at = String(ev.at);
    const at = new Date(ev.at * 1000);
    for (const [cls, text] of [["stage", ev.stage], ["at", at.toLocaleString()], ["took", ""], ["detail", ev.detail || ""]]) {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      tr.appendChild(td);
    }
    table.appendChild(tr);
    const none = document.getElementById("no-steps");
    if (none) none.remove();
  }

  const source = new EventSource("/events");
  source.onopen = function () { live.textContent = "live"; live.classList.add("on"); };
  source.onerror = function () { live.textContent = "reconnecting"; live.classList.remove("on"); };
  source.addEventListener("stage", function (msg) {
    const ev = JSON.parse(msg.data);
    if (view === "cluster") onCluster(ev);
    else if (view === "node") onNode(ev);
  });
})();
