// realtime-erc capture page: streams this browser's microphone (and camera) to the server that
// served the page, over the ingest protocol (INGEST_PROTOCOL.md), and shows the session's
// emotions as they come back (STREAM_PROTOCOL.md): each utterance, and an emotion-over-time
// chart per speaker. Audio: an AudioWorklet (pcm-worklet.js) → 16 kHz mono PCM s16le chunks,
// sent as 0x01 + PCM. Camera: a canvas → JPEG at ≤ 5 fps, sent as 0x02 + float64 LE capture
// time (seconds of audio sent so far: the session clock) + JPEG. Text from the server is only
// ever set with textContent (never parsed as HTML).
"use strict";

(function () {
  const RATE = 16000;
  const CHUNK_MS = 40;
  const MAX_FPS = 5;
  const FRAME_W = 320, FRAME_H = 240;
  const MAX_BUFFERED = 512 * 1024; // bytes waiting in the socket: skip camera frames beyond this
  const END_TIMEOUT_MS = 120000; // after "end", how long to wait for the server to close
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = {
    joy: "--joy", happy: "--joy", excited: "--joy", surprise: "--surprise",
    anger: "--anger", angry: "--anger", frustrated: "--anger", sadness: "--sadness",
    sad: "--sadness", fear: "--fear", disgust: "--disgust", neutral: "--neutral",
  };
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const colorOf = (label) => css(COLORS[String(label || "").toLowerCase()] || "--none");
  const $ = (id) => document.getElementById(id);

  // everything the page knows about the current session (window.ercCapture: tests, the curious)
  const state = {
    phase: "idle", sessionId: null, model: null, labels: [], limits: null, status: null,
    utterances: new Map(), errors: [], audioSamples: 0, frames: 0, video: false,
    closeCode: null, closeReason: "",
  };
  window.ercCapture = state;

  let ws = null, ctx = null, worklet = null, stream = null, frameTimer = null;
  let ready = false, held = [], lastFrameAt = null, grabbing = false, endTimer = null;
  let flushed = null; // resolves when the worklet has posted its last chunk

  // ---- helpers ------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function fmtTime(t) {
    const m = Math.floor(t / 60), s = (t - 60 * m).toFixed(1).padStart(4, "0");
    return `${m}:${s}`;
  }

  const clock = () => state.audioSamples / RATE; // the session clock: seconds of audio sent

  function setPhase(phase, text) {
    state.phase = phase;
    const e = $("state");
    e.dataset.state = phase;
    e.className = `state state-${phase}`;
    e.textContent = text || phase;
    const button = $("start");
    const live = phase === "starting" || phase === "live";
    button.textContent = live ? "Stop" : "Start";
    button.dataset.action = live ? "stop" : "start";
    button.disabled = phase === "finishing";
    $("use-video").disabled = phase !== "idle" && phase !== "ended" && phase !== "error";
  }

  function showError(code, message) {
    state.errors.push({ code, message });
    const e = $("error");
    e.hidden = false;
    e.dataset.code = code;
    e.textContent = `${code}: ${message}`;
  }

  function wsUrl() {
    const q = new URLSearchParams(location.search);
    const url = new URL("v1/sessions", location.href); // next to this page (a proxy's prefix too)
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    const token = q.get("access_token");
    if (token) url.searchParams.set("access_token", token);
    return url.toString();
  }

  // ---- capture ------------------------------------------------------------------------------
  async function openMedia(wantVideo) {
    const audio = { channelCount: 1, echoCancellation: false, noiseSuppression: false,
                    autoGainControl: false };
    if (wantVideo) {
      try {
        return await navigator.mediaDevices.getUserMedia({
          audio, video: { width: { ideal: FRAME_W }, height: { ideal: FRAME_H },
                          frameRate: { ideal: MAX_FPS } },
        });
      } catch (e) {
        $("media-info").textContent = `camera unavailable (${e.name}: ${e.message}): audio only`;
      }
    }
    return navigator.mediaDevices.getUserMedia({ audio, video: false });
  }

  async function startAudio(mediaStream) {
    // a 16 kHz context lets the browser resample; the worklet downsamples whatever it gets
    // ?audio_context=native: the device's rate, downsampled by the worklet alone
    const native = new URLSearchParams(location.search).get("audio_context") === "native";
    for (const options of native ? [{}] : [{ sampleRate: RATE }, {}]) {
      let context = null;
      try {
        context = new AudioContext(options);
        await context.audioWorklet.addModule("pcm-worklet.js");
        const source = context.createMediaStreamSource(mediaStream);
        const node = new AudioWorkletNode(context, "pcm-downsampler", {
          numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
          processorOptions: { targetRate: RATE, chunkMs: CHUNK_MS },
        });
        node.port.onmessage = onPcm;
        const mute = context.createGain();
        mute.gain.value = 0; // keeps the graph pulled without playing the microphone back
        source.connect(node);
        node.connect(mute).connect(context.destination);
        await context.resume();
        ctx = context;
        worklet = node;
        return `${context.sampleRate} Hz → ${RATE} Hz`;
      } catch (e) {
        if (context) context.close().catch(() => {});
        if (Object.keys(options).length === 0) throw e;
      }
    }
    return "";
  }

  function onPcm(e) {
    if (e.data instanceof ArrayBuffer) {
      if (ready) sendAudio(e.data);
      // before "ready": held, and sent once the server is ready (or with "end")
      else if (state.phase === "starting" || state.phase === "finishing") held.push(e.data);
    } else if (e.data && e.data.flushed && flushed) {
      flushed();
    }
  }

  function sendAudio(pcm) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(1 + pcm.byteLength);
    message[0] = 0x01;
    message.set(new Uint8Array(pcm), 1);
    ws.send(message);
    state.audioSamples += pcm.byteLength / 2;
  }

  function startFrames() {
    const video = $("preview"), canvas = $("frame");
    const fps = Math.min(MAX_FPS, (state.limits && state.limits.max_fps) || MAX_FPS);
    const maxBytes = (state.limits && state.limits.max_frame_bytes) || Infinity;
    const g = canvas.getContext("2d");
    frameTimer = setInterval(() => {
      if (!ready || grabbing || !ws || ws.readyState !== WebSocket.OPEN) return;
      if (video.readyState < 2 || !video.videoWidth) return;
      const at = clock();
      // at most `fps` frames per second of the session clock (the server counts them so)
      if (lastFrameAt !== null && at - lastFrameAt < 1 / fps) return;
      if (ws.bufferedAmount > MAX_BUFFERED) return; // the network is behind: audio first
      const scale = Math.min(FRAME_W / video.videoWidth, FRAME_H / video.videoHeight, 1);
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      g.drawImage(video, 0, 0, canvas.width, canvas.height);
      lastFrameAt = at;
      grabbing = true;
      canvas.toBlob(async (blob) => {
        try {
          if (!blob || !ready || !ws || ws.readyState !== WebSocket.OPEN) return;
          const jpeg = new Uint8Array(await blob.arrayBuffer());
          if (jpeg.byteLength > maxBytes) return;
          const message = new ArrayBuffer(9 + jpeg.byteLength);
          const view = new DataView(message);
          view.setUint8(0, 0x02);
          view.setFloat64(1, at, true);
          new Uint8Array(message, 9).set(jpeg);
          if (state.phase === "live") {
            ws.send(message);
            state.frames += 1;
          }
        } finally {
          grabbing = false;
        }
      }, "image/jpeg", 0.75);
    }, 40);
  }

  async function start() {
    reset();
    setPhase("starting", "starting…");
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      showError("insecure_page", "this browser gives the microphone only to secure pages: open " +
        "the page over https, or on localhost");
      setPhase("error");
      return;
    }
    const wantVideo = $("use-video").checked;
    try {
      stream = await openMedia(wantVideo);
    } catch (e) {
      showError("no_microphone", `the microphone cannot be opened (${e.name}: ${e.message}): ` +
        "allow it for this page, or plug one in");
      setPhase("error");
      return;
    }
    state.video = stream.getVideoTracks().length > 0;
    let audioInfo;
    try {
      audioInfo = await startAudio(stream);
    } catch (e) {
      showError("audio", `audio processing cannot start (${e.name}: ${e.message})`);
      stopMedia();
      setPhase("error");
      return;
    }
    if (state.video) {
      $("preview").srcObject = stream;
      $("preview").hidden = false;
    }
    $("media-info").textContent = `microphone ${audioInfo}` +
      (state.video ? " · camera → JPEG ≤ 5 fps" : " · no camera");
    connect();
  }

  function connect() {
    const socket = new WebSocket(wsUrl());
    ws = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => {
      const start = { type: "start", schema: "erc.ingest/1",
        audio: { encoding: "pcm_s16le", sample_rate: RATE, channels: 1 },
        video: state.video ? { encoding: "jpeg" } : null, pace: "realtime" };
      const q = new URLSearchParams(location.search);
      if (q.get("session_id")) start.session_id = q.get("session_id");
      socket.send(JSON.stringify(start));
    };
    socket.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      let doc;
      try { doc = JSON.parse(e.data); } catch (err) { return; }
      if (doc && typeof doc === "object") onDocument(doc);
    };
    socket.onerror = () => {
      if (!ready && state.phase === "starting") {
        showError("connection", `cannot reach ${wsUrl().replace(/access_token=[^&]*/, "access_token=…")}`);
      }
    };
    socket.onclose = (e) => {
      state.closeCode = e.code;
      state.closeReason = e.reason;
      finish(e.code === 1000 ? null : e);
    };
  }

  function onDocument(doc) {
    if (doc.type === "ready") {
      ready = true;
      state.sessionId = doc.session_id;
      state.model = doc.model;
      state.labels = Array.isArray(doc.labels) ? doc.labels : [];
      state.limits = doc.limits || null;
      $("session-info").textContent = `session ${doc.session_id} · model ${doc.model || "—"}`;
      for (const pcm of held) sendAudio(pcm);
      held = [];
      if (state.phase === "starting") {
        setPhase("live", "live");
        if (state.video) startFrames();
      }
      scheduleRender();
    } else if (doc.type === "error") {
      showError(String(doc.code || "error"), String(doc.message || ""));
    } else if (doc.schema === "erc.emotion/1") {
      const old = state.utterances.get(doc.utterance_id);
      // a provisional document never replaces the final one of the same utterance
      if (!old || !(doc.provisional && !old.provisional)) state.utterances.set(doc.utterance_id, doc);
      scheduleRender();
    } else if (doc.schema === "erc.status/1") {
      state.status = doc.state;
      scheduleRender();
    }
  }

  async function stop() {
    if (state.phase !== "starting" && state.phase !== "live") return;
    const wasReady = ready;
    setPhase("finishing", "finishing…");
    clearInterval(frameTimer);
    frameTimer = null;
    if (worklet) {
      await Promise.race([
        new Promise((resolve) => { flushed = resolve; worklet.port.postMessage("flush"); }),
        new Promise((resolve) => setTimeout(resolve, 500)),
      ]);
    }
    stopMedia();
    if (ws && ws.readyState === WebSocket.OPEN) {
      if (!wasReady) { for (const pcm of held) sendAudio(pcm); held = []; }
      ready = false;
      ws.send(JSON.stringify({ type: "end" }));
      // the server sends the last utterances' events, then closes
      endTimer = setTimeout(() => { if (ws) ws.close(1000); }, END_TIMEOUT_MS);
    } else {
      if (ws) ws.close();
      finish(null);
    }
  }

  function stopMedia() {
    if (worklet) { worklet.port.onmessage = null; worklet.disconnect(); worklet = null; }
    if (ctx) { ctx.close().catch(() => {}); ctx = null; }
    if (stream) { for (const track of stream.getTracks()) track.stop(); stream = null; }
    $("preview").srcObject = null;
  }

  function finish(closeEvent) {
    clearInterval(frameTimer);
    frameTimer = null;
    clearTimeout(endTimer);
    ready = false;
    held = [];
    stopMedia();
    ws = null;
    if (closeEvent && !state.errors.length) {
      showError("closed", `the server closed the session (code ${closeEvent.code}` +
        (closeEvent.reason ? `: ${closeEvent.reason}` : "") + ")");
    }
    setPhase(closeEvent ? "error" : "ended", closeEvent ? `closed (${closeEvent.code})` : "ended");
    scheduleRender();
  }

  function reset() {
    state.sessionId = null; state.model = null; state.labels = []; state.limits = null;
    state.status = null; state.utterances = new Map(); state.errors = []; state.audioSamples = 0;
    state.frames = 0; state.video = false; state.closeCode = null; state.closeReason = "";
    ready = false; held = []; lastFrameAt = null; grabbing = false;
    $("error").hidden = true;
    $("error").textContent = "";
    $("session-info").textContent = "";
    render();
  }

  // ---- rendering ----------------------------------------------------------------------------
  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; render(); }, 30); // not rAF: renders in a hidden tab too
  }

  function render() {
    const ordered = [...state.utterances.values()].sort((a, b) => a.utterance_id - b.utterance_id);
    renderList(ordered);
    renderCharts(ordered);
    const info = $("session-info");
    info.dataset.status = state.status || "";
    if (state.sessionId) {
      info.textContent = `session ${state.sessionId} · model ${state.model || "—"}` +
        (state.status ? ` · ${state.status}` : "");
    }
  }

  function renderList(ordered) {
    const list = $("utterances");
    const follow = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    const rows = ordered.map((u) => {
      const li = el("li", u.provisional ? "provisional" : "");
      li.dataset.utterance = String(u.utterance_id);
      li.dataset.speaker = String(u.speaker);
      li.dataset.provisional = u.provisional ? "true" : "false";
      li.dataset.label = u.label || "";
      li.append(el("span", "t", `${fmtTime(u.start)}–${fmtTime(u.end)}`));
      li.append(el("span", "who", u.speaker));
      const text = el("span", "text", u.text || "…");
      if (!u.provisional) text.style.color = colorOf(u.label);
      li.append(text);
      li.append(el("span", "lbl", u.label || ""));
      return li;
    });
    list.replaceChildren(...rows);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function labelsOf(finals) {
    const seen = new Set(state.labels);
    for (const u of finals) {
      if (u.scores && typeof u.scores === "object") Object.keys(u.scores).forEach((k) => seen.add(k));
      if (u.label) seen.add(u.label);
    }
    return [...seen];
  }

  function renderCharts(ordered) {
    const finals = ordered.filter((u) => !u.provisional);
    const root = $("charts");
    const speakers = [...new Set(ordered.map((u) => String(u.speaker)))].sort();
    const labels = labelsOf(finals);
    const xmax = Math.max(10, ...ordered.map((u) => Number(u.end) || 0), clock());
    const width = Math.max(260, Math.floor(root.clientWidth || 600));
    const charts = speakers.map((speaker) =>
      speakerChart(speaker, finals.filter((u) => String(u.speaker) === speaker), labels, xmax,
                   width));
    root.replaceChildren(...charts);
    if (!speakers.length) root.append(el("p", "meta", "no utterance yet"));
    const legend = $("legend");
    legend.replaceChildren(...labels.map((name) => {
      const item = el("span", "legend-item", name);
      item.dataset.label = name;
      item.style.setProperty("--swatch", colorOf(name));
      return item;
    }));
  }

  // One speaker's emotions over the session: a line per label (its probability at each of the
  // speaker's utterances, x = the utterance's end), a dot on the winning label, and a band
  // under the plot coloured by each utterance's label over its span.
  function speakerChart(speaker, finals, labels, xmax, width) {
    const box = el("div", "chart");
    box.dataset.speaker = speaker;
    const last = finals[finals.length - 1];
    const head = el("div", "chart-head");
    head.append(el("span", "who", speaker));
    const now = el("span", "current", last ? last.label || "no label" : "…");
    if (last) now.style.color = colorOf(last.label);
    head.append(now, el("span", "meta", `${finals.length} utterance${finals.length === 1 ? "" : "s"}`));
    box.append(head);

    const H = 150, L = 34, R = 10, T = 8, B = 34, band = 10;
    const plotW = width - L - R, plotH = H - T - B;
    const x = (t) => L + (Math.max(0, t) / xmax) * plotW;
    const y = (p) => T + (1 - Math.max(0, Math.min(1, p))) * plotH;
    const s = svg("svg", { width, height: H, viewBox: `0 0 ${width} ${H}`, role: "img",
                           "aria-label": `emotions of ${speaker} over time` });
    for (const p of [0, 0.5, 1]) {
      s.append(svg("line", { x1: L, x2: width - R, y1: y(p), y2: y(p), class: "grid" }));
      const tick = svg("text", { x: L - 4, y: y(p) + 4, class: "tick", "text-anchor": "end" });
      tick.textContent = p.toFixed(1);
      s.append(tick);
    }
    const stepS = [5, 10, 15, 30, 60, 120, 300, 600].find((d) => xmax / d <= 8) || 1200;
    for (let t = 0; t <= xmax + 1e-9; t += stepS) {
      const tick = svg("text", { x: x(t), y: H - 4, class: "tick", "text-anchor": "middle" });
      tick.textContent = fmtTime(t).replace(/\.0$/, "");
      s.append(tick);
    }
    // the label band: what the speaker felt, utterance by utterance
    const bandY = T + plotH + 6;
    for (const u of finals) {
      const r = svg("rect", { x: x(u.start), y: bandY, height: band, class: "band",
                              width: Math.max(2, x(u.end) - x(u.start)), fill: colorOf(u.label) });
      r.dataset.utterance = String(u.utterance_id);
      r.dataset.label = u.label || "";
      s.append(r);
    }
    // a line per label that matters for this speaker (wins once, or reaches 0.2)
    const scored = finals.filter((u) => u.scores && typeof u.scores === "object");
    let series = 0;
    for (const name of labels) {
      const ps = scored.map((u) => Number(u.scores[name]) || 0);
      if (!scored.some((u, i) => u.label === name || ps[i] >= 0.2)) continue;
      series += 1;
      const line = svg("polyline", {
        points: scored.map((u, i) => `${x(u.end).toFixed(1)},${y(ps[i]).toFixed(1)}`).join(" "),
        class: "series", stroke: colorOf(name),
      });
      line.dataset.label = name;
      s.append(line);
    }
    // a dot per utterance, at its label's probability (1 without scores)
    for (const u of finals) {
      const p = u.scores && u.label in u.scores ? Number(u.scores[u.label]) : 1;
      const dot = svg("circle", { cx: x(u.end), cy: y(p), r: 4, class: "point",
                                  fill: colorOf(u.label) });
      dot.dataset.utterance = String(u.utterance_id);
      dot.dataset.label = u.label || "";
      const title = svg("title");
      title.textContent = `${fmtTime(u.end)} ${u.label || "no label"} ${p.toFixed(2)} — ${u.text || ""}`;
      dot.append(title);
      s.append(dot);
    }
    box.dataset.series = String(series);
    box.dataset.points = String(finals.length);
    box.append(s);
    return box;
  }

  // ---- wiring -------------------------------------------------------------------------------
  $("start").addEventListener("click", () => {
    if ($("start").dataset.action === "stop") stop();
    else start();
  });
  const q = new URLSearchParams(location.search);
  if (q.get("video") === "0") $("use-video").checked = false;
  const dash = $("to-dashboard");
  if (q.get("access_token")) {
    dash.href = `index.html?${new URLSearchParams({ access_token: q.get("access_token") })}`;
  }
  setInterval(() => { $("clock").textContent = fmtTime(clock()); }, 200);
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(render, 100); });
  window.addEventListener("beforeunload", () => { if (ws) ws.close(); });
  setPhase("idle", "idle");
  render();
})();
