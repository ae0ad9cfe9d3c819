// Live alert queue over server-sent events; no framework. A new or changed alert in the user's scope arrives as
// an "alert" event with its queue row; rows that match the page's filters are inserted or updated in place.
"use strict";
(function () {
  const table = document.getElementById("queue");
  if (!table || !window.EventSource) return;
  const filters = JSON.parse(table.dataset.filters || "{}");
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const count = document.getElementById("count");
  const empty = document.querySelector(".empty-note");

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    el.textContent = value;
    return el;
  }
  function age(s) {
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function matches(a) {
    const st = filters.state || "open";
    if (st === "open" && a.closed) return false;
    if (st === "open" && a.state === "resolved") return false;
    if (st !== "open" && st !== "all" && a.status !== st) return false;
    if (filters.severity && a.severity !== filters.severity) return false;
    if (filters.site && a.site !== filters.site) return false;
    if (filters.rule && !(a.rule === filters.rule || a.rule.startsWith(filters.rule + "."))) return false;
    if (filters.retrospective === "yes" && !a.retrospective) return false;
    if (filters.retrospective === "no" && a.retrospective) return false;
    return true;
  }
  function row(a) {
    const tr = document.createElement("tr");
    tr.className = "row sev-row-" + a.severity;
    tr.dataset.id = a.alert_id;
    tr.dataset.opened = a.opened_at;
    const sev = document.createElement("td");
    sev.appendChild(text("span", a.severity, "sev sev-" + a.severity));
    const rule = document.createElement("td");
    const link = text("a", a.rule);
    link.href = "/alerts/" + encodeURIComponent(a.alert_id);
    rule.appendChild(link);
    if (a.retrospective) { rule.append(" "); rule.appendChild(text("span", "retro", "tag")); }
    if (a.verdict) { rule.append(" "); rule.appendChild(text("span", a.verdict.replace("_", " "), "tag")); }
    const site = document.createElement("td");
    const sl = text("a", a.site);
    sl.href = "/sites/" + encodeURIComponent(a.site);
    site.append(sl, " ", text("span", a.subject, "muted"));
    const st = document.createElement("td");
    st.appendChild(text("span", a.status, "st st-" + a.status));
    const ag = text("td", age(a.age_s), "age");
    ag.dataset.age = a.age_s;
    tr.append(sev, rule, site, st, ag);
    return tr;
  }
  function place(tr) {
    // Oldest first: insert before the first row opened later.
    for (const other of body.rows) {
      if (other.dataset.opened > tr.dataset.opened) { body.insertBefore(tr, other); return; }
    }
    body.appendChild(tr);
  }
  function recount() {
    count.textContent = body.rows.length;
    if (empty) empty.hidden = body.rows.length > 0;
  }
  function connect() {
    const es = new EventSource("/events");
    es.onopen = function () { live.classList.add("on"); };
    es.onerror = function () { live.classList.remove("on"); };
    es.addEventListener("alert", function (ev) {
      const a = JSON.parse(ev.data);
      const old = body.querySelector('tr[data-id="' + CSS.escape(a.alert_id) + '"]');
      if (!matches(a)) { if (old) old.remove(); recount(); return; }
      const tr = row(a);
      if (old) old.replaceWith(tr); else place(tr);
      tr.classList.add("fresh");
      setTimeout(function () { tr.classList.remove("fresh"); }, 2500);
      recount();
    });
  }
  connect();
  setInterval(function () {
    for (const td of body.querySelectorAll("td.age")) {
      const s = Number(td.dataset.age) + 30;
      td.dataset.age = s;
      td.textContent = age(s);
    }
  }, 30000);
})();
