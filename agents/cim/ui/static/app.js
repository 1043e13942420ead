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
    return (i === 0 ? n.toFixed(0) : n.toFixed(1).replace(/\.0$/, "")) + " " + units[i]; // as plots.human_bytes
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

  var live = document.getElementById("units") || document.getElementById("live-events");
  if (window.EventSource && live) {
    // From the event the page was rendered at: one that lands before this connects comes too.
    var since = live.getAttribute("data-since");
    var source = new EventSource("/events/stream" + (since ? "?since=" + encodeURIComponent(since) : ""));
    source.addEventListener("cim", function (msg) {
      var e = JSON.parse(msg.data);
      addEvent(e);
      if (e.unit) addUnitRow(e.unit);
    });
  }

  function pageText(html) {
    // The words of an HTML error page, one space between its blocks; a parsed document
    // runs no script and loads nothing.
    var doc = new DOMParser().parseFromString(html, "text/html"), words = [];
    var walk = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
    for (var n = walk.nextNode(); n; n = walk.nextNode()) {
      if (!n.parentNode.closest("script, style")) words.push(n.textContent);
    }
    return words.join(" ");
  }

  // Why a request failed, as a sentence. The dashboard answers errors as JSON ({"error": ...});
  // anything else (a proxy's HTML page, a plain-text refusal) is shown as its status and
  // text, never parsed as JSON.
  function failure(r) {
    var answered = "the server answered " + r.status + (r.statusText ? " " + r.statusText : "");
    var type = (r.headers.get("Content-Type") || "").split(";")[0].trim();
    if (type === "application/json") {
      return r.json().then(function (body) { return (body && body.error) || answered; },
                           function () { return answered; });
    }
    return r.text().then(function (t) {
      if (type === "text/html") t = pageText(t);
      t = t.replace(/\s+/g, " ").trim().slice(0, 300);
      if (t.indexOf(String(r.status)) === 0) return "the server answered " + t; // "413 Request Entity Too Large" says its status
      return answered + (t ? ": " + t : "");
    });
  }

  var upload = document.querySelector('form[data-enhance="upload"]');
  if (upload && window.fetch && window.FormData) {
    upload.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var status = upload.querySelector(".upload-status");
      var file = upload.querySelector('input[type="file"]').files[0];
      var max = Number(upload.getAttribute("data-max-upload"));
      if (file && max && file.size > max) {
        // Said before sending: the server would refuse it too (413), after the whole upload.
        var size = humanBytes(file.size);
        if (size === humanBytes(max)) size = "just over " + size;
        status.textContent = "Not stored: " + upload.getAttribute("data-too-large").replace("{size}", size);
        return;
      }
      status.textContent = "Uploading…";
      fetch("/units", {
        method: "POST", body: new FormData(upload), credentials: "same-origin",
        headers: { "Accept": "application/json", "X-CSRF-Token": csrf }
      }).then(function (r) {
        if (!r.ok) return failure(r).then(function (why) { status.textContent = "Not stored: " + why; });
        return r.json().then(function (body) {
          status.textContent = (body.created ? "Stored " : "Already stored ") + body.cid;
          upload.reset();
        });
      }).catch(function (err) { status.textContent = "Not stored: " + (err && err.message ? err.message : err); });
    });
  }
})();
