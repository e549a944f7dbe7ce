// realtime-erc capture: an AudioWorklet processor that turns the microphone's input (any rate,
// any channel count) into 16 kHz mono PCM s16le chunks for the ingest protocol
// (INGEST_PROTOCOL.md). Channels are averaged; downsampling low-pass filters (windowed sinc)
// before interpolating, so speech keeps its consonants without aliasing. Each chunk (about
// `chunkMs` of audio) is posted to the page as a transferred ArrayBuffer of Int16 samples; the
// message "flush" posts what is left (then {flushed: true}).
"use strict";

class PcmDownsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.outRate = o.targetRate || 16000;
    this.step = sampleRate / this.outRate; // input samples per output sample
    this.chunk = Math.max(1, Math.round((this.outRate * (o.chunkMs || 40)) / 1000));
    this.taps = this.step > 1 ? lowPass(0.45 / this.step, 8 * Math.ceil(this.step) + 1) : null;
    this.history = new Float32Array(this.taps ? this.taps.length - 1 : 0);
    this.prev = 0; // the last (filtered) input sample of the previous block
    this.t = 0; // where the next output sample falls, in input samples from this block's start
    this.out = new Int16Array(this.chunk);
    this.n = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        this.post();
        this.port.postMessage({ flushed: true });
      }
    };
  }

  post() {
    if (this.n === 0) return;
    const buf = this.out.slice(0, this.n);
    this.port.postMessage(buf.buffer, [buf.buffer]);
    this.n = 0;
  }

  push(x) {
    const v = Math.max(-1, Math.min(1, x));
    this.out[this.n++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    if (this.n === this.chunk) this.post();
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true; // nothing connected yet
    const len = input[0].length;
    const mono = new Float32Array(len);
    for (const channel of input) for (let i = 0; i < len; i++) mono[i] += channel[i];
    if (input.length > 1) for (let i = 0; i < len; i++) mono[i] /= input.length;
    const x = this.taps ? this.filter(mono) : mono;
    // linear interpolation at the output positions; index -1 is the previous block's last sample
    while (this.t < len - 1) {
      const i = Math.floor(this.t), f = this.t - i;
      const a = i < 0 ? this.prev : x[i];
      this.push(a + (x[i + 1] - a) * f);
      this.t += this.step;
    }
    this.t -= len;
    this.prev = x[len - 1];
    return true;
  }

  filter(block) {
    const h = this.taps, m = this.history.length, len = block.length;
    const buf = new Float32Array(m + len);
    buf.set(this.history);
    buf.set(block, m);
    const y = new Float32Array(len);
    for (let n = 0; n < len; n++) {
      let acc = 0;
      for (let k = 0; k < h.length; k++) acc += h[k] * buf[n + m - k];
      y[n] = acc;
    }
    this.history = buf.slice(len);
    return y;
  }
}

// A Blackman-windowed sinc low-pass; `cutoff` in cycles per input sample, unity gain at DC.
function lowPass(cutoff, n) {
  const h = new Float32Array(n), mid = (n - 1) / 2;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const k = i - mid;
    const sinc = k === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * k) / (Math.PI * k);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1)) +
      0.08 * Math.cos((4 * Math.PI * i) / (n - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < n; i++) h[i] /= sum;
  return h;
}

registerProcessor("pcm-downsampler", PcmDownsampler);
