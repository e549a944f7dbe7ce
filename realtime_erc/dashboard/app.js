// realtime-erc dashboard: subscribes to the emotion stream (STREAM_PROTOCOL.md) over
// MQTT-over-WebSockets and renders, per session and speaker, the current emotion, its
// probabilities, and the conversation's timeline. Text from the stream is only ever set with
// textContent (never parsed as HTML).
"use strict";

(function () {
  const COLORS = {
    joy: "--joy", happy: "--joy", excited: "--joy", surprise: "--surprise",
    anger: "--anger", angry: "--anger", frustrated: "--anger", sadness: "--sadness",
    sad: "--sadness", fear: "--fear", disgust: "--disgust", neutral: "--neutral",
  };
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const colorOf = (label) => css(COLORS[String(label || "").toLowerCase()] || "--none");

  // sessions: raw session id -> {id, status, model, labelSet, speakers: Map, utterances: Map}
  const state = { sessions: new Map(), connection: "connecting", messages: 0, prefix: "erc" };
  window.ercDashboard = state; // for tests and the curious

  function session(id) {
    let s = state.sessions.get(id);
    if (!s) {
      s = { id, status: null, model: null, labelSet: null, speakers: new Map(),
            utterances: new Map() };
      state.sessions.set(id, s);
    }
    return s;
  }

  // A provisional document never replaces the final one of the same utterance.
  function newer(old, doc) {
    if (!old) return true;
    if (doc.utterance_id !== old.utterance_id) return doc.utterance_id > old.utterance_id;
    return !(doc.provisional && !old.provisional);
  }

  function onEmotion(doc) {
    const s = session(doc.session_id);
    s.labelSet = doc.label_set; s.model = doc.model;
    if (newer(s.utterances.get(doc.utterance_id), doc)) s.utterances.set(doc.utterance_id, doc);
    if (newer(s.speakers.get(doc.speaker), doc)) s.speakers.set(doc.speaker, doc);
  }

  function onStatus(doc) {
    const s = session(doc.session_id);
    s.status = doc.state; s.model = doc.model; s.labelSet = doc.label_set;
  }

  function onMessage(topic, payload) {
    state.messages += 1;
    if (!payload || payload.length === 0) return; // a cleared retained state
    let doc;
    try { doc = JSON.parse(new TextDecoder().decode(payload)); } catch (e) { return; }
    if (!doc || typeof doc !== "object") return;
    if (doc.schema === "erc.emotion/1") onEmotion(doc);
    else if (doc.schema === "erc.status/1") onStatus(doc);
    else return;
    scheduleRender();
  }

  // ---- rendering -------------------------------------------------------------------------
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function fmtTime(t) {
    const m = Math.floor(t / 60), s = (t - 60 * m).toFixed(1).padStart(4, "0");
    return `${m}:${s}`;
  }

  function speakerCard(doc) {
    const card = el("div", "speaker");
    card.dataset.speaker = doc.speaker;
    card.style.borderLeftColor = colorOf(doc.label);
    card.append(el("div", "speaker-name", doc.speaker));
    const current = el("div", "current" + (doc.provisional ? " provisional" : ""),
      doc.label ? doc.label : "no label");
    current.dataset.label = doc.label || "";
    current.style.color = colorOf(doc.label);
    card.append(current);
    card.append(el("div", "said", doc.text ? `“${doc.text}”` : "…"));
    const bars = el("div", "bars");
    if (doc.scores && typeof doc.scores === "object") {
      for (const [name, p] of Object.entries(doc.scores)) {
        const row = el("div", "bar");
        row.dataset.label = name;
        const track = el("div", "bar-track"), fill = el("div", "bar-fill");
        fill.style.width = `${Math.max(0, Math.min(1, Number(p))) * 100}%`;
        fill.style.background = colorOf(name);
        track.append(fill);
        row.append(el("span", "", name), track, el("span", "bar-value", Number(p).toFixed(2)));
        bars.append(row);
      }
    } else {
      bars.append(el("div", "no-scores", "no emotion model: no scores"));
    }
    card.append(bars);
    return card;
  }

  function sessionCard(s) {
    const card = el("section", "session");
    card.dataset.session = s.id;
    const head = el("div", "session-head");
    head.append(el("h2", "", s.id));
    if (s.status) {
      const badge = el("span", `status status-${s.status}`, s.status);
      badge.dataset.status = s.status;
      head.append(badge);
    }
    head.append(el("span", "meta", `model ${s.model || "—"} · ${s.labelSet || ""}`));
    card.append(head);
    const speakers = el("div", "speakers");
    for (const name of [...s.speakers.keys()].sort()) speakers.append(speakerCard(s.speakers.get(name)));
    card.append(speakers);
    // the timeline is its own panel and scrolling area, below the cards in the card's grid
    const panel = el("div", "timeline-panel");
    const caption = el("div", "timeline-head", `timeline · ${s.utterances.size} utterance` +
      (s.utterances.size === 1 ? "" : "s"));
    const list = el("ol", "timeline");
    const ids = [...s.utterances.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      const u = s.utterances.get(id);
      const li = el("li", u.provisional ? "provisional" : "");
      li.dataset.utterance = String(id);
      li.append(el("span", "t", `${fmtTime(u.start)}–${fmtTime(u.end)}`));
      li.append(el("span", "who", u.speaker));
      const text = el("span", "text", u.text || "…");
      text.style.color = colorOf(u.label);
      li.append(text);
      li.append(el("span", "lbl", u.label || ""));
      list.append(li);
    }
    panel.append(caption, list);
    card.append(panel);
    return { card, list };
  }

  // Each timeline follows its newest row unless the user scrolled it up: session id -> the
  // scrollTop they left it at. A timeline that gets narrower (more lines) keeps following.
  const scrolledBack = new Map();
  const atBottom = (list) => list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const pin = (id, list) => {
    const top = scrolledBack.get(id);
    list.scrollTop = top == null ? list.scrollHeight : top;
  };
  const resized = typeof ResizeObserver === "function"
    ? new ResizeObserver((entries) => {
      for (const { target } of entries) if (target.isConnected) pin(target.dataset.session, target);
    })
    : null;

  function render() {
    const root = document.getElementById("sessions");
    const cards = [];
    const ordered = [...state.sessions.values()].sort((a, b) =>
      (a.status === "online" ? 0 : 1) - (b.status === "online" ? 0 : 1) || a.id.localeCompare(b.id));
    for (const s of ordered) {
      const { card, list } = sessionCard(s);
      list.dataset.session = s.id;
      cards.push([card, list, s.id]);
    }
    if (resized) resized.disconnect();
    root.replaceChildren(...cards.map(([card]) => card));
    for (const [, list, id] of cards) {
      pin(id, list);
      list.addEventListener("scroll", () => {
        if (atBottom(list)) scrolledBack.delete(id);
        else scrolledBack.set(id, list.scrollTop);
      }, { passive: true });
      if (resized) resized.observe(list);
    }
    document.getElementById("empty").hidden = state.sessions.size > 0;
  }

  function setConnection(name, text) {
    state.connection = name;
    const e = document.getElementById("connection");
    e.className = `conn conn-${name}`;
    e.dataset.state = name;
    e.textContent = text;
  }

  // ---- connection --------------------------------------------------------------------------
  async function settings() {
    const q = new URLSearchParams(location.search);
    let cfg = {};
    try { cfg = await (await fetch("config.json", { cache: "no-store" })).json(); } catch (e) { /* file:// */ }
    return {
      broker: q.get("broker") || cfg.broker || `ws://${location.hostname || "127.0.0.1"}:9001`,
      prefix: (q.get("prefix") || cfg.prefix || "erc").replace(/\/+$/, ""),
    };
  }

  async function main() {
    const { broker, prefix } = await settings();
    state.prefix = prefix;
    document.getElementById("broker-url").textContent = broker;
    document.getElementById("topic-prefix").textContent = prefix;
    const client = mqtt.connect(broker, {
      clientId: `erc-dashboard-${Math.random().toString(16).slice(2, 10)}`,
      clean: true, reconnectPeriod: 1000, connectTimeout: 5000, protocolVersion: 4,
    });
    client.on("connect", () => {
      setConnection("connected", `connected · ${broker}`);
      client.subscribe([`${prefix}/+/status`, `${prefix}/+/+/state`, `${prefix}/+/+/emotion`],
        { qos: 1 });
    });
    client.on("reconnect", () => setConnection("reconnecting", "reconnecting…"));
    client.on("offline", () => setConnection("offline", `broker unreachable · ${broker}`));
    client.on("error", (err) => setConnection("error", `error: ${err.message}`));
    client.on("message", (topic, payload) => onMessage(topic, payload));
    render();
  }

  main();
})();
