// Progressive enhancement only: every page works without this file. It adds live updates
// (Server-Sent Events from /events/stream) and uploads that stay on the page.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var csrf = main ? main.getAttribute("data-csrf") : "";

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value; // never innerHTML: a title is data, not markup
    if (cls) el.className = cls;
    return el;
  }

  function humanBytes(n) {
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  function addUnitRow(u) {
    var table = document.querySelector("#units[data-live] tbody");
    if (!table || document.querySelector('#units a[href="/units/' + u.cid + '"]')) return;
    var tr = document.createElement("tr");
    tr.className = "new";
    var title = document.createElement("td");
    var a = text("a", u.title || "(untitled)");
    a.href = "/units/" + encodeURIComponent(u.cid);
    title.appendChild(a);
    tr.appendChild(title);
    var labels = document.createElement("td");
    (u.labels || []).forEach(function (l) {
      var la = text("a", l, "label");
      la.href = "/units?label=" + encodeURIComponent(l);
      labels.appendChild(la);
      labels.appendChild(document.createTextNode(" "));
    });
    tr.appendChild(labels);
    tr.appendChild(text("td", humanBytes(u.size || 0)));
    tr.appendChild(text("td", u.created_at || ""));
    tr.appendChild(text("td", u.cid.slice(0, 16) + "…"));
    table.insertBefore(tr, table.firstChild);
  }

  function addEvent(e) {
    var list = document.getElementById("live-events");
    if (!list) return;
    var li = document.createElement("li");
    li.appendChild(text("time", e.time));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(text("code", e.type));
    li.appendChild(document.createTextNode(" " + e.id + " "));
    li.appendChild(text("span", e.agent, "agent"));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) list.removeChild(list.lastChild);
  }

  if (window.EventSource && (document.getElementById("units") || document.getElementById("live-events"))) {
    var source = new EventSource("/events/stream");
    source.addEventListener("cim", function (msg) {
      var e = JSON.parse(msg.data);
      addEvent(e);
      if (e.unit) addUnitRow(e.unit);
    });
  }

  var upload = document.querySelector('form[data-enhance="upload"]');
  if (upload && window.fetch && window.FormData) {
    upload.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var status = upload.querySelector(".upload-status");
      status.textContent = "Uploading…";
      fetch("/units", {
        method: "POST", body: new FormData(upload), credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf }
      }).then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      }).then(function (res) {
        status.textContent = res.ok
          ? (res.body.created ? "Stored " : "Already stored ") + res.body.cid
          : "Not stored: " + res.body.error;
        if (res.ok) upload.reset();
      }).catch(function (err) { status.textContent = "Not stored: " + err; });
    });
  }
})();
