// The browser demo: ?bundle=URL-of-a-mobile-bundle&kw=a.kw,b.kw[&autostart][&report=URL]
// Served from the repository (or any static server) so that ../heron.js and ../node_modules resolve:
//   python -m http.server -d runtime/js  ->  http://localhost:8000/demo/?bundle=...&kw=...
import * as ortModule from '../node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import { KeywordSpotter } from '../heron.js';

const ort = ortModule.default ?? ortModule;
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL('../node_modules/onnxruntime-web/dist/', import.meta.url).href;

const params = new URLSearchParams(location.search);
const bundle = params.get('bundle') || 'bundle';
const keywordFiles = (params.get('kw') || '').split(',').filter(Boolean);
const report = params.get('report');  // tests: each detection is also POSTed here as JSON
const $ = (id) => document.getElementById(id);

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

function show(det, clock) {
  const li = document.createElement('li');
  const words = det.words.map((w) => `${w.word} ${w.start_s.toFixed(2)}-${w.end_s.toFixed(2)} s`).join(', ');
  li.textContent = `${det.keyword}  score ${det.score.toFixed(3)}  ${det.start_s.toFixed(2)}-${det.end_s.toFixed(2)} s`
    + (words ? `  (${words})` : '') + `  [${clock.toFixed(1)} s of audio]`;
  li.dataset.keyword = det.keyword;
  $('detections').appendChild(li);
  if (report) fetch(report, { method: 'POST', body: JSON.stringify(det) }).catch(() => {});
}

async function listen(spotter) {
  $('start').disabled = true;
  const rate = spotter.m.sample_rate;
  const ctx = new AudioContext({ sampleRate: rate });  // the browser resamples the microphone to the model's rate
  const mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const source = ctx.createMediaStreamSource(mic);
  await ctx.audioWorklet.addModule(new URL('capture-worklet.js', import.meta.url));
  const capture = new AudioWorkletNode(ctx, 'heron-capture');
  const stream = spotter.stream();
  let samples = 0;
  let queue = Promise.resolve();
  capture.port.onmessage = (e) => {
    const x = Float32Array.from(e.data, (v) => Math.max(-1, Math.min(1, v)));
    queue = queue.then(async () => {
      const before = Math.floor(samples / rate);
      samples += x.length;
      for (const det of await stream.accept(x)) show(det, samples / rate);
      if (report && Math.floor(samples / rate) > before) {  // tests: how much audio the page has heard
        fetch(report, { method: 'POST', body: JSON.stringify({ audio_s: samples / rate }) }).catch(() => {});
      }
    }).catch((err) => status(String(err.message || err), true));
  };
  source.connect(capture);
  capture.connect(ctx.destination);  // keeps the node pulled; it writes no output (silence)
  status(`listening for ${[...spotter.keywords.keys()].join(', ')} (${rate} Hz)`);
}

async function main() {
  const spotter = await KeywordSpotter.load((rel) => fetchBytes(`${bundle}/${rel}`), ort,
    { where: bundle, sessionOptions: { executionProviders: ['wasm'] } });
  for (const k of keywordFiles) await spotter.addKeywordFile(await fetchBytes(k), k);
  if (spotter.keywords.size === 0) throw new Error('no keyword files: add ?kw=hey_heron.kw (heron kws enroll TEXT --out F.kw)');
  status(`ready: ${[...spotter.keywords.keys()].join(', ')}`);
  $('start').disabled = false;
  $('start').onclick = () => listen(spotter).catch((err) => status(String(err.message || err), true));
  if (params.has('autostart')) await listen(spotter);
}

main().catch((err) => status(String(err.message || err), true));
