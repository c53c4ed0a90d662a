// hyperhive dashboard: live updates over one server-sent event stream, no framework.
// Pages mark their live parts with data-live (and an id); on a bus event the page is fetched again
// and those parts are swapped in place. Text from the hive is only ever put in with textContent.
"use strict";
(function () {
  const live = document.getElementById("live");
  const say = (text) => { if (live) live.textContent = text; };
  const EVENTS = ["message_sent", "message_delivered", "turn_events", "turn_state",
    "approval_requested", "approval_resolved", "approval_checked", "deploy", "agent_created", "agent_removed", "helper", "lagged"];

  let timer = null;
  async function refresh() {
    timer = null;
    const regions = document.querySelectorAll("[data-live][id]");
    if (regions.length === 0) return;
    let res;
    try {
      res = await fetch(location.href, { headers: { accept: "text/html" }, credentials: "same-origin" });
    } catch (e) { return; }
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    for (const el of regions) {
      if (el.contains(document.activeElement) && document.activeElement !== document.body) continue;
      const fresh = doc.getElementById(el.id);
      if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
    }
    countdown();
  }
  function schedule() { if (!timer) timer = setTimeout(refresh, 150); }

  const stream = document.getElementById("turn-stream");
  function showTurnEvents(data) {
    if (!stream || data.agent !== stream.dataset.agent) return;
    for (const ev of data.events || []) {
      const li = document.createElement("li");
      const kind = document.createElement("strong");
      kind.textContent = (ev && ev.type) || "event";
      const body = document.createElement("span");
      let text = ev && typeof ev.text === "string" ? ev.text : JSON.stringify(ev);
      if (text.length > 2000) text = text.slice(0, 2000) + "…";
      body.textContent = " " + text;
      li.append(kind, body);
      stream.append(li);
    }
    while (stream.children.length > 500) stream.firstElementChild.remove();
  }

  // The streams this page holds, closed when it goes (see the pagehide listener below).
  const streams = [];
  if (window.EventSource) {
    const es = new EventSource("/events");
    streams.push(es);
    es.onopen = () => say("live");
    es.onerror = () => say("reconnecting…");
    for (const name of EVENTS) {
      es.addEventListener(name, (e) => {
        if (name === "turn_events") {
          try { showTurnEvents(JSON.parse(e.data)); } catch (err) { /* not ours */ }
          return;
        }
        schedule();
      });
    }
  }

  // The agent page's log follows its own stream (`log` events: the last lines first, then what
  // is appended); after each (re)connect the first event replaces what is shown.
  const log = document.getElementById("log");
  if (log && log.dataset.follow && window.EventSource) {
    let fresh = true;
    const logs = new EventSource(log.dataset.follow);
    streams.push(logs);
    logs.onopen = () => { fresh = true; };
    logs.addEventListener("log", (e) => {
      let text;
      try { text = JSON.parse(e.data).text; } catch (err) { return; }
      if (typeof text !== "string") return;
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      let shown = fresh ? text : log.textContent + text;
      fresh = false;
      if (shown.length > 200000) shown = shown.slice(shown.indexOf("\n", shown.length - 200000) + 1);
      log.textContent = shown;
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
  }

  // A browser allows six connections per host over HTTP/1.1 and each stream holds one: a page
  // left with its streams open can keep the next pages waiting for a free connection.
  window.addEventListener("pagehide", () => { for (const s of streams) s.close(); });

  function countdown() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time.ttl[data-expires]")) {
      const left = Math.round((Number(t.dataset.expires) - now) / 1000);
      if (left <= 0) { t.textContent = "expired"; continue; }
      const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      t.textContent = "expires in " + (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
    }
  }
  countdown();
  setInterval(countdown, 1000);

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.classList.contains("confirm") && !window.confirm(form.dataset.confirm || "Sure?")) {
      e.preventDefault();
    }
  });

  // Draws `plots` from the JSON block `dataId` into `boxId`; `what` names the points.
  function draw(dataId, boxId, what, plotsOf) {
    const data = document.getElementById(dataId);
    const box = document.getElementById(boxId);
    if (!data || !box || !window.uPlot) return;
    let s;
    try { s = JSON.parse(data.textContent); } catch (e) { return; }
    if (!s.at || s.at.length === 0) return;
    for (const [title, series] of plotsOf(s)) {
      const fig = document.createElement("figure");
      fig.className = "chart";
      // A screen reader hears what the chart is; the figures are in the badges above.
      fig.setAttribute("role", "img");
      fig.setAttribute("aria-label", title + ", " + s.at.length + " " + what);
      box.append(fig);
      // Each chart as wide as its grid cell.
      const width = Math.max(260, fig.clientWidth || 600);
      new window.uPlot({
        title, width, height: 200,
        series: [{}].concat(series.map(([label, _v, stroke]) => ({ label, stroke, width: 2, points: { show: true } }))),
      }, [s.at].concat(series.map(([_l, v]) => v)), fig);
    }
  }
  function charts() {
    draw("series", "charts", "turns", (s) => [
      ["Tokens per turn", [["input", s.input_tokens, "#2f6fdb"], ["output", s.output_tokens, "#d9822b"]]],
      ["Cost per turn (USD)", [["cost", s.cost_usd, "#3a9d5d"]]],
      ["Turn duration (s)", [["duration", s.duration_s, "#8e44ad"]]],
      ["Turns", [["turns", s.turns, "#c0392b"]]],
    ]);
    draw("calls", "call-charts", "model calls", (s) => [
      ["Tokens per model call", [["input", s.input_tokens, "#2f6fdb"], ["cache read", s.cache_read_tokens, "#7f8c8d"], ["output", s.output_tokens, "#d9822b"]]],
    ]);
  }
  if (document.readyState === "complete") charts(); else window.addEventListener("load", charts);
})();
