// The dashboard's one script: follows a page live by polling its feed (at most every 2 s) and changing the
// page in place. Every text from the server goes through textContent, never through HTML.
(function () {
  "use strict";
  var EVERY = 2000; // ms between two polls of a feed

  function poll(url, apply) {
    var busy = false;
    function tick() {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url(), { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { apply(data); } })
        .catch(function () { /* the broker restarting: the next poll tries again */ })
        .then(function () { busy = false; });
    }
    setInterval(tick, EVERY);
  }

  function stateSpan(state) {
    var span = document.createElement("span");
    span.className = "state state-" + state;
    span.textContent = state;
    return span;
  }

  function setState(holder, state) {
    if (!holder) { return; }
    holder.replaceChildren(stateSpan(state));
  }

  function counts(holder, byState) {
    if (!holder) { return; }
    var ul = document.createElement("ul");
    ul.className = "counts";
    Object.keys(byState).sort().forEach(function (name) {
      var li = document.createElement("li");
      li.appendChild(stateSpan(name));
      li.appendChild(document.createTextNode(" " + byState[name]));
      ul.appendChild(li);
    });
    holder.replaceChildren(ul);
  }

  function progress(holder, done, total) {
    if (!holder || !total) { return; }
    var bar = document.createElement("progress");
    bar.max = total;
    bar.value = done;
    bar.setAttribute("aria-label", "progress");
    var text = document.createElement("span");
    text.className = "small";
    text.textContent = " " + done + "/" + total;
    holder.replaceChildren(bar, text);
  }

  function followWorkflow(live) {
    var after = live.dataset.after;
    poll(function () { return live.dataset.feed + "?after=" + encodeURIComponent(after); }, function (data) {
      if (String(data.last) === String(after)) { return; }
      after = data.last;
      setState(document.getElementById("wf-state"), data.state);
      counts(document.getElementById("wf-counts"), data.counts);
      progress(document.getElementById("wf-progress"), data.progress[0], data.progress[1]);
      document.querySelectorAll("[data-node]").forEach(function (box) {
        var state = data.nodes[box.getAttribute("data-node")];
        if (!state) { return; }
        box.setAttribute("class", "box state-" + state);
        var label = box.getAttribute("aria-label") || "";
        box.setAttribute("aria-label", label.replace(/: [a-z_]+$/, ": " + state));
        var st = box.querySelector(".st");
        if (st) { st.textContent = state; }
      });
      document.querySelectorAll("[data-members]").forEach(function (text) {
        var value = data.sweeps[text.getAttribute("data-members")];
        if (value !== undefined) { text.textContent = value; }
      });
    });
  }

  function followNode(live) {
    poll(function () { return live.dataset.feed; }, function (data) {
      setState(document.getElementById("node-state"), data.state);
      var message = document.getElementById("node-message");
      if (message) { message.textContent = data.message || "—"; }
      var holder = document.getElementById("node-progress");
      if (holder && data.progress !== null) {
        var bar = document.createElement("progress");
        bar.max = 100;
        bar.value = data.progress;
        holder.replaceChildren(bar, document.createTextNode(" " + Math.round(data.progress) + "%"));
      }
    });
  }

  function followEvents(table) {
    var body = table.tBodies[0];
    poll(function () { return table.dataset.feed + "&after=" + encodeURIComponent(table.dataset.after); },
      function (data) {
        data.events.forEach(function (e) {
          var row = document.createElement("tr");
          e.slice(1).forEach(function (value) {
            var cell = document.createElement("td");
            cell.textContent = value;
            row.appendChild(cell);
          });
          body.appendChild(row);
          table.dataset.after = e[0];
        });
      });
  }

  function followList(table) {
    var rows = Array.prototype.slice.call(table.querySelectorAll("tr[data-gid]"));
    if (!rows.length) { return; }
    var ids = rows.map(function (row) { return row.getAttribute("data-gid"); }).join(",");
    poll(function () { return table.dataset.feed + "?ids=" + encodeURIComponent(ids); }, function (data) {
      rows.forEach(function (row) {
        var value = data.workflows[row.getAttribute("data-gid")];
        if (!value) { return; }
        setState(row.querySelector(".wf-state"), value[0]);
        progress(row.querySelector(".wf-progress"), value[1], value[2]);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var list = document.getElementById("workflows");
    if (list && list.dataset.feed) { followList(list); }
    var live = document.getElementById("live");
    if (live && live.dataset.feed.indexOf("/ui/workflows/") === 0) { followWorkflow(live); }
    if (live && live.dataset.feed.indexOf("/ui/nodes/") === 0) { followNode(live); }
    var events = document.getElementById("events");
    if (events) { followEvents(events); }
  });
}());
