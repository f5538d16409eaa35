// heron keyword spotting in JavaScript: a mobile bundle + keyword files -> detections in PCM.
//
// One source for Node (onnxruntime-node; see node.js, cli.js) and browsers (onnxruntime-web; see
// demo/). The loop follows docs/runtime.md, section by section; tests/test_js_runtime.py checks it
// against heron's Python runtime. Nothing here touches the file system or the network: the caller
// passes `readFile(relativePath) -> Promise<Uint8Array>` and the onnxruntime module.

export const BUNDLE_FORMAT = 'heron-kws-bundle/1';
export const KEYWORD_FORMAT = 'heron-keyword/1';
const MAX_MANIFEST_BYTES = 1 << 20;
const MAX_KEYWORD_FILE_BYTES = 64 * 1024;
const MAX_KEYWORD_PHONEMES = 20;
const MAX_KEYWORD_WORDS = 6;
const NEG = -1e9;
const PEAK_HOLD_S = 0.3;
const HEX64 = /^[0-9a-f]{64}$/;
// heron's phonemes in the order of the encoder's log_probs columns (heron.runtime.phonemes.PHONEMES)
const PHONEMES = ['AA', 'AE', 'AH', 'AO', 'AW', 'AY', 'B', 'CH', 'D', 'DH', 'EH', 'ER', 'EY', 'F', 'G', 'HH', 'IH', 'IY',
  'JH', 'K', 'L', 'M', 'N', 'NG', 'OW', 'OY', 'P', 'R', 'S', 'SH', 'T', 'TH', 'UH', 'UW', 'V', 'W', 'Y', 'Z', 'ZH'];

/** Every refusal: one line naming what and why. */
export class HeronError extends Error {}

export async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function parseJson(bytes, where) {
  try {
    return JSON.parse(utf8.decode(bytes));
  } catch (e) {
    throw new HeronError(`${where}: not valid JSON (${e.message})`);
  }
}

function num(x, lo, hi, where, integer = false) {
  if (typeof x !== 'number' || !Number.isFinite(x) || x < lo || x > hi || (integer && !Number.isInteger(x))) {
    throw new HeronError(`${where}: must be ${integer ? 'an integer' : 'a number'} in [${lo}, ${hi}], got ${JSON.stringify(x)}`);
  }
  return x;
}

// --- 1. loading and checking ---------------------------------------------------------------------

/** Read a .npy file of float32 (little-endian, C order) -> {shape, data}. */
export function readNpyFloat32(bytes, where) {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new HeronError(`${where}: not a .npy file`);
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hlen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + hlen));
  if (!/'descr':\s*'<f4'/.test(header) || !/'fortran_order':\s*False/.test(header)) {
    throw new HeronError(`${where}: expected little-endian float32 in C order`);
  }
  const m = /'shape':\s*\(([^)]*)\)/.exec(header);
  const shape = m ? m[1].split(',').map((s) => s.trim()).filter(Boolean).map(Number) : [];
  const n = shape.reduce((a, b) => a * b, 1);
  const off = start + hlen;
  if (bytes.length - off !== 4 * n) throw new HeronError(`${where}: holds ${bytes.length - off} data bytes, not ${4 * n}`);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = view.getFloat32(off + 4 * i, true);
  return { shape, data };
}

function checkManifest(m, where) {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new HeronError(`${where}: must hold a JSON object`);
  if (m.format !== BUNDLE_FORMAT) throw new HeronError(`${where}: unsupported bundle format ${JSON.stringify(m.format)}; this runtime reads ${BUNDLE_FORMAT}`);
  if (m.target !== 'onnx') throw new HeronError(`${where}: target ${JSON.stringify(m.target)}; this runtime runs ONNX bundles`);
  const sr = num(m.sample_rate, 8000, 48000, `${where}: sample_rate`, true);
  const chunk = num(m.chunk_samples, 160, 10 * sr, `${where}: chunk_samples`, true);
  const fs = num(m.frame_seconds, 0.005, 1, `${where}: frame_seconds`);
  const fpc = num(m.frames_per_chunk, 1, 1000, `${where}: frames_per_chunk`, true);
  if (Math.abs(fpc * fs * sr - chunk) > 1) throw new HeronError(`${where}: frames_per_chunk x frame_seconds must span chunk_samples`);
  const classes = m.phonemes && m.phonemes.classes;
  if (!Array.isArray(classes) || classes.length < 2 || classes.length > 1024 || !classes.every((c) => typeof c === 'string')) {
    throw new HeronError(`${where}: phonemes.classes must be a list of symbols`);
  }
  const blank = num(m.phonemes.blank, 0, classes.length - 1, `${where}: phonemes.blank`, true);
  if (classes.filter((_, i) => i !== blank).join() !== PHONEMES.join()) {
    throw new HeronError(`${where}: phonemes.classes must list heron's phonemes in heron's order (AA, AE, AH, ...)`);
  }
  const c = m.calibration || {};
  num(c.slope, 1e-3, 100, `${where}: calibration.slope`);
  num(c.offset, -50, 50, `${where}: calibration.offset`);
  num(c.per_phoneme, -10, 10, `${where}: calibration.per_phoneme`);
  num(c.threshold, 1e-3, 0.999, `${where}: calibration.threshold`);
  if (typeof c.znorm !== 'boolean') throw new HeronError(`${where}: calibration.znorm must be true or false`);
  const mt = m.matcher || {};
  num(mt.gap_penalty, 0, 10, `${where}: matcher.gap_penalty`);
  num(mt.frames_base, 1, 1000, `${where}: matcher.frames_base`, true);
  num(mt.frames_per_phoneme, 1, 100, `${where}: matcher.frames_per_phoneme`, true);
  num(mt.posterior_weight, 0, 10, `${where}: matcher.posterior_weight`);
  const known = ['gap_penalty', 'frames_base', 'frames_per_phoneme', 'posterior_weight'];
  const unknown = Object.keys(mt).filter((k) => !known.includes(k));
  if (unknown.length) throw new HeronError(`${where}: 'matcher' has fields this heron does not know: ${unknown}`);
  const enc = m.encoder || {};
  const inputs = enc.inputs || {};
  const pairs = enc.state_pairs || {};
  const outputs = enc.outputs || [];
  if (JSON.stringify(inputs.audio_chunk) !== JSON.stringify([1, chunk])) throw new HeronError(`${where}: encoder.inputs.audio_chunk must be [1, ${chunk}]`);
  for (const [name, shape] of Object.entries(inputs)) {
    if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isInteger(d) && d >= 1)
        || shape.reduce((a, b) => a * b, 1) > (1 << 22)) {
      throw new HeronError(`${where}: encoder.inputs.${name} must be a shape of positive integers (at most 4M elements)`);
    }
    if (name !== 'audio_chunk' && !(name in pairs && outputs.includes(pairs[name]))) {
      throw new HeronError(`${where}: encoder.state_pairs must map ${name} to one of encoder.outputs`);
    }
  }
  for (const o of ['log_probs', 'embeddings']) if (!outputs.includes(o)) throw new HeronError(`${where}: encoder.outputs must include ${o}`);
  if (!m.files || !m.files.encoder_int8) throw new HeronError(`${where}: files must list encoder_int8 (make a mobile bundle: heron kws export --mobile)`);
  if (m.mobile !== undefined && !HEX64.test(m.mobile.made_from)) throw new HeronError(`${where}: mobile.made_from must be 64 hex digits`);
  if (m.embedding_head !== undefined) checkHead(m, where);
}

const HEAD_RANGES = { weight: [0, 10], min_confidence: [0, 1], offset: [-50, 0], before_s: [0, 5] };
const HEAD_FILES = ['speech_embedding_mel', 'speech_embedding', 'embedding_head'];

/** The embedding head's section (heron.runtime.manifest.HeadCheck): its four numbers and its three graphs. */
function checkHead(m, where) {
  const h = m.embedding_head;
  if (typeof h !== 'object' || h === null || Array.isArray(h)) throw new HeronError(`${where}: embedding_head must be an object`);
  const unknown = Object.keys(h).filter((k) => !(k in HEAD_RANGES));
  if (unknown.length) throw new HeronError(`${where}: 'embedding_head' has fields this heron does not know: ${unknown}`);
  for (const [k, [lo, hi]] of Object.entries(HEAD_RANGES)) num(h[k], lo, hi, `${where}: embedding_head.${k}`);
  for (const key of HEAD_FILES) if (!m.files[key]) throw new HeronError(`${where}: files must list ${key} (the embedding head's graphs)`);
}

function safePath(rel, where) {
  if (typeof rel !== 'string' || rel === '' || rel.startsWith('/') || rel.includes('\\') || rel.split('/').some((p) => p === '..' || p === '')) {
    throw new HeronError(`${where}: file path ${JSON.stringify(rel)} leaves the bundle`);
  }
  return rel;
}

/** Parse and check a keyword file's bytes (docs/runtime.md, section 1.2). */
export async function parseKeywordFile(bytes, where) {
  if (bytes.length > MAX_KEYWORD_FILE_BYTES) throw new HeronError(`${where}: ${bytes.length} bytes is too large for a keyword file (at most ${MAX_KEYWORD_FILE_BYTES})`);
  const nl1 = bytes.indexOf(10);
  const nl2 = nl1 < 0 ? -1 : bytes.indexOf(10, nl1 + 1);
  if (nl1 < 0 || nl2 < 0 || nl2 !== bytes.length - 1) throw new HeronError(`${where}: not a heron keyword file (two JSON lines expected; truncated or edited?)`);
  const line2 = bytes.subarray(nl1 + 1, nl2);
  let header; let body;
  try {
    header = JSON.parse(utf8.decode(bytes.subarray(0, nl1)));
    body = JSON.parse(utf8.decode(line2));
  } catch (e) {
    throw new HeronError(`${where}: not a heron keyword file (its lines are not JSON; truncated or edited?)`);
  }
  if (typeof header !== 'object' || header === null || header.format !== KEYWORD_FORMAT) {
    throw new HeronError(`${where}: unsupported keyword file format ${JSON.stringify(header && header.format)}; this runtime reads ${JSON.stringify(KEYWORD_FORMAT)}`);
  }
  if (header.sha256 !== await sha256Hex(line2)) throw new HeronError(`${where}: checksum mismatch: the keyword file was edited or corrupted (enroll it again)`);
  if (typeof body !== 'object' || body === null || body.format !== KEYWORD_FORMAT) throw new HeronError(`${where}: the body's format is not ${KEYWORD_FORMAT}`);
  const { bundle_sha256: sha, name, text, words, word_phonemes: wph, classes, threshold, znorm, max_frames: maxFrames } = body;
  if (typeof sha !== 'string' || !HEX64.test(sha)) throw new HeronError(`${where}: bundle_sha256 must be 64 lower-case hex digits`);
  if (typeof name !== 'string' || !name.trim() || name.length > 200 || typeof text !== 'string' || text.length > 200) {
    throw new HeronError(`${where}: name and text must be non-empty strings of at most 200 characters`);
  }
  if (!Array.isArray(words) || words.length < 1 || words.length > MAX_KEYWORD_WORDS || !Array.isArray(wph) || wph.length !== words.length) {
    throw new HeronError(`${where}: words: 1..${MAX_KEYWORD_WORDS}, one phoneme list per word`);
  }
  if (!words.every((w) => typeof w === 'string' && w.length > 0 && w.length <= 64)) throw new HeronError(`${where}: words must be non-empty strings`);
  if (!wph.every((p) => Array.isArray(p) && p.length > 0 && p.every((s) => typeof s === 'string' && s.length > 0 && s.length <= 4))) {
    throw new HeronError(`${where}: word_phonemes must be lists of phoneme symbols`);
  }
  const n = wph.reduce((a, p) => a + p.length, 0);
  if (!Array.isArray(classes) || classes.length < 1 || classes.length > MAX_KEYWORD_PHONEMES || classes.length !== n) {
    throw new HeronError(`${where}: classes: one id per phoneme (${n}), at most ${MAX_KEYWORD_PHONEMES}`);
  }
  if (!classes.every((c) => Number.isInteger(c) && c >= 0 && c < 1024)) throw new HeronError(`${where}: classes must be integer class ids`);
  if (typeof threshold !== 'number' || !(threshold >= 1e-3 && threshold <= 0.999)) throw new HeronError(`${where}: threshold ${threshold} is outside [0.001, 0.999]`);
  let norm = null;
  if (znorm !== null) {
    if (typeof znorm !== 'object' || Object.keys(znorm).sort().join() !== 'mean,std'
        || !Number.isFinite(znorm.mean) || !Number.isFinite(znorm.std)) {
      throw new HeronError(`${where}: znorm must be null or {mean, std} (finite numbers)`);
    }
    if (!(znorm.mean >= -200 && znorm.mean <= 0) || !(znorm.std >= 0.05 && znorm.std <= 100)) {
      throw new HeronError(`${where}: znorm (mean ${znorm.mean}, std ${znorm.std}) is outside what background speech gives`);
    }
    norm = [znorm.mean, znorm.std];
  }
  if (!Number.isInteger(maxFrames)) throw new HeronError(`${where}: field 'max_frames' must be an integer`);
  return { bundleSha256: sha, name, text, words, wordPhonemes: wph, classes, threshold, norm, maxFrames };
}

// --- 4. the keyword recurrence -----------------------------------------------------------------------

class Matcher {
  constructor(classes, blank, gapPenalty, maxFrames) {
    const n = classes.length;
    const S = 2 * n - 1;
    this.n = n;
    this.S = S;
    this.labels = new Int32Array(S).fill(blank);
    for (let i = 0; i < n; i++) this.labels[2 * i] = classes[i];
    this.skipOk = new Uint8Array(S);
    for (let s = 2; s < S; s += 2) this.skipOk[s] = this.labels[s] !== this.labels[s - 2] ? 1 : 0;
    this.cost = new Float64Array(S);
    for (let s = 0; s < S; s++) this.cost[s] = this.labels[s] === blank ? gapPenalty : 0;
    this.maxFrames = maxFrames;
  }

  initState(frame) {
    return { score: new Float64Array(this.S).fill(NEG), start: new Float64Array(this.S).fill(frame) };
  }

  /** One frame: llr (Float64Array of C), absolute frame f -> [raw score, path start]. */
  step(llr, f, st) {
    const { S, labels, skipOk, cost } = this;
    const score = new Float64Array(S);
    const start = new Float64Array(S);
    for (let s = 0; s < S; s++) {
      let best = st.score[s];
      let from = st.start[s];
      const prev = s === 0 ? 0.0 : st.score[s - 1];
      if (prev > best) { best = prev; from = s === 0 ? f : st.start[s - 1]; }
      if (skipOk[s] && st.score[s - 2] > best) { best = st.score[s - 2]; from = st.start[s - 2]; }
      score[s] = best + llr[labels[s]] - cost[s];
      start[s] = from;
      if (f - from >= this.maxFrames) score[s] = NEG;
    }
    st.score = score;
    st.start = start;
    const raw = Math.exp(Math.max(score[S - 1], -50.0 * this.n) / this.n);
    return [raw, start[S - 1]];
  }
}

/** One frame's log-probabilities -> each class's frame score (its ratio to the best, + w * its
 * log-probability; Python: ctc_kws.frame_scores) and the best class. */
function frameScores(lp, w) {
  const C = lp.length;
  let mx = -Infinity; let arg = 0;
  for (let c = 0; c < C; c++) if (lp[c] > mx) { mx = lp[c]; arg = c; }
  const llr = new Float64Array(C);
  for (let c = 0; c < C; c++) llr[c] = lp[c] - mx + (w ? w * lp[c] : 0);
  return { llr, arg };
}

// --- 5. calibration ----------------------------------------------------------------------------------

function calibrate(raw, n, cal, norm) {
  let z = Math.log(Math.max(raw, 1e-30));
  if (norm) z = (z - norm[0]) / norm[1];
  const logit = cal.slope * z + cal.offset + cal.per_phoneme * n;
  return 1 / (1 + Math.exp(-Math.min(60, Math.max(-60, logit))));
}

// --- 7. word times (dynamic sequence partitioning) ---------------------------------------------------

function dspPartition(win, words, voiced) {
  // win: array of T Float32Array(D); words: array of W Float64Array(D); voiced: array of T booleans
  const T = win.length;
  const W = words.length;
  if (W === 0 || T < W) return null;
  const D = words[0].length;
  const v = voiced.map((x) => (x ? 1 : 0));
  if (v.reduce((a, b) => a + b, 0) < W) return null;
  const wv = words.map((w) => { let nn = 0; for (const x of w) nn += x * x; nn = Math.sqrt(nn) + 1e-8; return w.map((x) => x / nn); });
  const csum = [new Float64Array(D)];
  const ccount = [0];
  for (let t = 0; t < T; t++) {
    const row = new Float64Array(D);
    for (let d = 0; d < D; d++) row[d] = csum[t][d] + win[t][d] * v[t];
    csum.push(row);
    ccount.push(ccount[t] + v[t]);
  }
  const neg = -1e9;
  const best = Array.from({ length: W + 1 }, () => new Float64Array(T + 1).fill(neg));
  const back = Array.from({ length: W + 1 }, () => new Int32Array(T + 1));
  best[0][0] = 0.0;
  const seg = new Float64Array(D);
  for (let w = 1; w <= W; w++) {
    for (let e = w; e <= T; e++) {
      let bestTot = -Infinity;
      let bestS = 0;
      for (let s = 0; s <= e - 1; s++) {
        const count = ccount[e] - ccount[s];
        let tot;
        if (count > 0) {
          let nn = 0;
          for (let d = 0; d < D; d++) { seg[d] = (csum[e][d] - csum[s][d]) / count; nn += seg[d] * seg[d]; }
          nn = Math.sqrt(nn) + 1e-8;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += (seg[d] / nn) * wv[w - 1][d];
          tot = best[w - 1][s] + dot;
        } else {
          tot = best[w - 1][s] + neg;
        }
        if (tot > bestTot) { bestTot = tot; bestS = s; }
      }
      best[w][e] = bestTot;
      back[w][e] = bestS;
    }
  }
  let e = T;
  if (best[W][e] <= neg / 2) return null;
  const segs = [];
  for (let w = W; w >= 1; w--) {
    const s = back[w][e];
    let first = -1; let last = -1;
    for (let t = s; t < e; t++) if (v[t]) { if (first < 0) first = t; last = t; }
    segs.push(first >= 0 ? [first, last + 1] : [s, e]);
    e = s;
  }
  return segs.reverse();
}

// --- 5b. the embedding head (heron.runtime.speech_embedding, Stream._head_factors, _HeadEvent) ---------

const SE_RATE = 16000;
const MEL_HOP = 160;
const MEL_FFT = 512;
const MEL_BINS = 32;
const WINDOW_FRAMES = 76;
const STEP_FRAMES = 8;
const SE_DIM = 96;
const PAD_SECONDS = 0.4;
const SCORE_FLOOR = Math.exp(-50.0);

/** Embedding frames for n samples of audio (0 when shorter than one 775 ms window). */
function seFrames(n) {
  const mels = Math.max(0, Math.floor((n - MEL_FFT) / MEL_HOP) + 1);
  return Math.max(0, Math.floor((mels - WINDOW_FRAMES) / STEP_FRAMES) + 1);
}

class HeadRunner {
  constructor(m, mel, embedding, head, ort) {
    this.cfg = m.embedding_head;
    this.mel = mel;
    this.embedding = embedding;
    this.head = head;
    this.ort = ort;
    this.C = m.phonemes.classes.length;
  }

  /** Audio (float, 16 kHz) -> Float32Array of (mel frames x 32), scaled x / 10 + 2. */
  async mels(audio) {
    if (audio.length < MEL_FFT) return new Float32Array(0);
    const x = new Float32Array(audio.length);
    for (let i = 0; i < audio.length; i++) x[i] = audio[i] * 32767.0;
    const out = await this.mel.run({ input: new this.ort.Tensor('float32', x, [1, x.length]) });
    const spec = Float32Array.from(out[this.mel.outputNames[0]].data);
    for (let i = 0; i < spec.length; i++) spec[i] = spec[i] / 10.0 + 2.0;
    return spec;
  }

  /** Mels -> the embedding frames first..n-1 (consecutive) as an array of Float32Array(96). */
  async embed(spec, first, n) {
    if (first >= n) return [];
    const a = first * STEP_FRAMES * MEL_BINS;
    const b = ((n - 1) * STEP_FRAMES + WINDOW_FRAMES) * MEL_BINS;
    const sub = spec.slice(a, b);
    const out = await this.embedding.run({ input_1: new this.ort.Tensor('float32', sub, [1, sub.length / MEL_BINS, MEL_BINS, 1]) });
    const d = out[this.embedding.outputNames[0]].data;
    const rows = [];
    for (let i = 0; i < n - first; i++) rows.push(d.slice(i * SE_DIM, (i + 1) * SE_DIM));
    return rows;
  }

  /** (frames of 96) -> log-probabilities as an array of Float32Array(C) (none for no frames). */
  async logProbs(feats) {
    if (feats.length === 0) return [];
    const x = new Float32Array(feats.length * SE_DIM);
    feats.forEach((r, i) => x.set(r, i * SE_DIM));
    const out = await this.head.run({ embeddings: new this.ort.Tensor('float32', x, [1, feats.length, SE_DIM]) });
    const d = out[this.head.outputNames[0]].data;
    const rows = [];
    for (let i = 0; i < d.length / this.C; i++) rows.push(d.subarray(i * this.C, (i + 1) * this.C));
    return rows;
  }

  /** The head's per-phoneme score h -> the factor on a first-stage score. */
  factor(h) {
    return Math.exp(this.cfg.weight * (Math.log(Math.max(h, SCORE_FLOOR)) - this.cfg.offset));
  }
}

/** The head's window while chunks with candidates follow each other (Python: _HeadEvent). */
class HeadEvent {
  constructor(start) {
    this.start = start;
    this.audio = new Float32Array(0);
    this.kept = [];
  }

  async logProbs(runner, newAudio) {
    const audio = new Float32Array(this.audio.length + newAudio.length);
    audio.set(this.audio);
    audio.set(newAudio, this.audio.length);
    this.audio = audio;
    const pad = Math.trunc(PAD_SECONDS * SE_RATE);
    const x = new Float32Array(pad + audio.length + pad);
    x.set(audio, pad);
    const spec = await runner.mels(x);
    const n = Math.max(0, Math.floor((spec.length / MEL_BINS - WINDOW_FRAMES) / STEP_FRAMES) + 1);
    const inside = Math.min(n, seFrames(pad + audio.length));  // frames that no later audio reaches into
    const feats = this.kept.concat(await runner.embed(spec, this.kept.length, n));
    this.kept = feats.slice(0, Math.max(inside, this.kept.length));
    return runner.logProbs(feats);
  }
}

// --- the spotter -----------------------------------------------------------------------------------

export class KeywordSpotter {
  /**
   * Load a mobile (or full) bundle. readFile(rel) -> Promise<Uint8Array>; ort: onnxruntime-node or
   * onnxruntime-web; options.sessionOptions are merged into onnxruntime's.
   */
  static async load(readFile, ort, { where = 'bundle', sessionOptions = {} } = {}) {
    const mbytes = await readFile('manifest.json');
    if (mbytes.length > MAX_MANIFEST_BYTES) throw new HeronError(`${where}/manifest.json: larger than ${MAX_MANIFEST_BYTES} bytes`);
    const identity = await sha256Hex(mbytes);
    const recorded = utf8.decode(await readFile('manifest.sha256')).trim();
    if (recorded !== identity) throw new HeronError(`${where}/manifest.json: sha256 ${identity} is not manifest.sha256 ${recorded}: the bundle was edited`);
    const m = parseJson(mbytes, `${where}/manifest.json`);
    checkManifest(m, `${where}/manifest.json`);
    const files = {};
    for (const key of ['encoder_int8', 'phoneme_table', ...(m.embedding_head ? HEAD_FILES : [])]) {
      const info = m.files[key];
      if (!info) continue;
      const rel = safePath(info.path, `${where}/manifest.json`);
      const bytes = await readFile(rel);
      if (bytes.length !== info.bytes || await sha256Hex(bytes) !== info.sha256) {
        throw new HeronError(`${where}/${rel}: size or sha256 differs from the manifest (corrupt or replaced)`);
      }
      files[key] = bytes;
    }
    const session = await ort.InferenceSession.create(files.encoder_int8, {
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      extra: { session: { x64quantprecision: '1' } },  // exact int8 products on x86 (docs/runtime.md, 3)
      ...sessionOptions,
    });
    const table = files.phoneme_table ? readNpyFloat32(files.phoneme_table, `${where}/phoneme_table.npy`) : null;
    let head = null;
    if (m.embedding_head) {  // float32 graphs: onnxruntime's defaults, one thread
      const open = (key) => ort.InferenceSession.create(files[key], { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all', ...sessionOptions });
      head = new HeadRunner(m, await open('speech_embedding_mel'), await open('speech_embedding'), await open('embedding_head'), ort);
    }
    return new KeywordSpotter(m, identity, session, ort, table, head);
  }

  constructor(manifest, identity, session, ort, phonemeTable, head = null) {
    this.head = head;
    this.m = manifest;
    this.identity = identity;
    this.identities = [identity].concat(manifest.mobile ? [manifest.mobile.made_from] : []);
    this.session = session;
    this.ort = ort;
    this.table = phonemeTable;
    this.classes = manifest.phonemes.classes;
    this.blank = manifest.phonemes.blank;
    this.posteriorWeight = manifest.matcher.posterior_weight;
    this.classOf = new Map();
    this.classes.forEach((c, i) => { if (i !== this.blank) this.classOf.set(c, i); });
    this.keywords = new Map();
  }

  /** Add a keyword from a keyword file's bytes (section 1.2-1.3); refused in one line if it does not fit. */
  async addKeywordFile(bytes, where = 'keyword file') {
    const k = await parseKeywordFile(bytes, where);
    const m = this.m;
    if (!this.identities.includes(k.bundleSha256)) {
      throw new HeronError(`${where}: made for another bundle (sha256 ${k.bundleSha256.slice(0, 16)}...; this bundle is ${this.identity.slice(0, 16)}...): enroll it again with this bundle`);
    }
    const flat = k.wordPhonemes.flat();
    if (flat.some((p) => !this.classOf.has(p)) || flat.map((p) => this.classOf.get(p)).join() !== k.classes.join()) {
      throw new HeronError(`${where}: its classes do not spell its phonemes in this bundle's class table`);
    }
    const want = m.matcher.frames_base + m.matcher.frames_per_phoneme * k.classes.length;
    if (k.maxFrames !== want) throw new HeronError(`${where}: max_frames ${k.maxFrames} is not this bundle's rule (${want} for ${k.classes.length} phonemes)`);
    if (m.calibration.znorm !== (k.norm !== null)) throw new HeronError(`${where}: its Z-norm statistics do not match the bundle's calibration`);
    if (this.keywords.has(k.name)) throw new HeronError(`${where}: keyword ${JSON.stringify(k.name)} is already loaded`);
    k.matcher = new Matcher(k.classes, this.blank, m.matcher.gap_penalty, k.maxFrames);
    this.keywords.set(k.name, k);
    return k;
  }

  initState() {
    const state = {};
    for (const [name, shape] of Object.entries(this.m.encoder.inputs)) {
      if (name === 'audio_chunk') continue;
      state[name] = new this.ort.Tensor('float32', new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
    }
    return state;
  }

  /** One chunk of chunk_samples float32 samples -> {logProbs: Float32Array(F*C), embeddings, D} (section 3). */
  async runChunk(chunk, state) {
    const n = this.m.chunk_samples;
    const feeds = { ...state, audio_chunk: new this.ort.Tensor('float32', chunk, [1, n]) };
    const out = await this.session.run(feeds);
    for (const name of Object.keys(state)) state[name] = out[this.m.encoder.state_pairs[name]];
    const emb = out.embeddings;
    return { logProbs: out.log_probs.data, embeddings: emb.data, D: emb.dims[2] };
  }

  stream(options = {}) {
    return new Stream(this, options);
  }

  /** Whole recording -> per keyword {score, start_s, end_s, detections} (Python: score_file + a stream). */
  async scoreAudio(samples) {
    const st = this.stream();
    const dets = (await st.accept(samples)).concat(await st.flush());
    const out = {};
    for (const [name, b] of st.best) {
      out[name] = { score: b.score, start_s: b.start, end_s: b.end, detections: dets.filter((d) => d.keyword === name) };
    }
    return out;
  }
}

// --- 2, 6. the stream: chunks, detections -----------------------------------------------------------------

export class Stream {
  constructor(spotter, { refractoryS = 1.0 } = {}) {
    this.sp = spotter;
    this.refractoryS = refractoryS;
    this.buf = new Float32Array(0);
    this.enc = spotter.initState();
    this.frames = 0;
    this.tracks = new Map();
    for (const [name, k] of spotter.keywords) {
      this.tracks.set(name, { k, st: k.matcher.initState(0), above: false, lastFire: -Infinity, pending: null, age: 0 });
    }
    this.best = new Map();
    const m = spotter.m;
    this.keep = m.matcher.frames_base + m.matcher.frames_per_phoneme * MAX_KEYWORD_PHONEMES + 2 + m.frames_per_chunk;
    this.emb = [];  // recent frames' embeddings (word times)
    this.voiced = [];
    this.embFirst = 0;
    this.audio = new Float32Array(0);  // recent audio, for the embedding head (bundles with one)
    this.audioFirst = 0;  // absolute sample index of this.audio[0]
    this.headEvent = null;
    if (spotter.head) {
      const maxKeywordFrames = m.matcher.frames_base + m.matcher.frames_per_phoneme * MAX_KEYWORD_PHONEMES;
      this.audioKeep = Math.trunc((maxKeywordFrames * m.frame_seconds + spotter.head.cfg.before_s) * m.sample_rate + 2 * m.chunk_samples);
    }
  }

  static toFloat(pcm) {
    if (pcm instanceof Int16Array) return Float32Array.from(pcm, (x) => x / 32768);
    if (!(pcm instanceof Float32Array)) throw new HeronError('audio must be a Float32Array in [-1, 1] or an Int16Array');
    for (const x of pcm) {
      if (!Number.isFinite(x)) throw new HeronError('audio contains NaN or infinite samples; the chunk was not consumed');
      if (Math.abs(x) > 1 + 1e-6) throw new HeronError('float audio must be in [-1, 1]; pass an Int16Array for integer PCM');
    }
    return pcm;
  }

  async accept(pcm) {
    const a = Stream.toFloat(pcm);
    const merged = new Float32Array(this.buf.length + a.length);
    merged.set(this.buf);
    merged.set(a, this.buf.length);
    this.buf = merged;
    return this.drain();
  }

  async flush() {
    const n = this.sp.m.chunk_samples;
    let out = [];
    if (this.buf.length) {
      const pad = (n - (this.buf.length % n)) % n;
      const merged = new Float32Array(this.buf.length + pad);
      merged.set(this.buf);
      this.buf = merged;
      out = await this.drain();
    }
    for (const tr of this.tracks.values()) if (tr.pending) out.push(this.emit(tr));
    return out;
  }

  async drain() {
    const sp = this.sp;
    const m = sp.m;
    const n = m.chunk_samples;
    const C = sp.classes.length;
    const fs = m.frame_seconds;
    const hold = Math.max(1, Math.round(PEAK_HOLD_S / fs));
    const dets = [];
    while (this.buf.length >= n) {
      const chunk = this.buf.slice(0, n);
      this.buf = this.buf.slice(n);
      const { logProbs, embeddings, D } = await sp.runChunk(chunk, this.enc);
      if (sp.head) {  // the longest keyword window, the head's margin and this chunk
        const merged = new Float32Array(this.audio.length + chunk.length);
        merged.set(this.audio);
        merged.set(chunk, this.audio.length);
        const cut = Math.max(0, merged.length - this.audioKeep);
        this.audio = merged.slice(cut);
        this.audioFirst += cut;
      }
      const F = logProbs.length / C;
      const tracks = [...this.tracks.values()];
      const raws = tracks.map(() => new Float64Array(F));  // section 4 for every frame and keyword first
      const starts = tracks.map(() => new Float64Array(F));
      for (let t = 0; t < F; t++) {
        const lp = logProbs.subarray(t * C, (t + 1) * C);
        const { llr, arg } = frameScores(lp, sp.posteriorWeight);
        if (sp.table) {
          this.emb.push(embeddings.slice(t * D, (t + 1) * D));
          this.voiced.push(arg !== sp.blank);
        }
        tracks.forEach((tr, k) => { [raws[k][t], starts[k][t]] = tr.k.matcher.step(llr, this.frames + t, tr.st); });
      }
      if (sp.head && tracks.length) {  // section 5b: the head's factors on the candidates' scores
        const factors = await this.headFactors(tracks, raws, starts, F);
        tracks.forEach((_, k) => { for (let t = 0; t < F; t++) raws[k][t] *= factors[k][t]; });
      }
      for (let t = 0; t < F; t++) {
        const f = this.frames + t;
        for (const [k, tr] of tracks.entries()) {
          const name = tr.k.name;
          const raw = raws[k][t];
          const start = starts[k][t];
          const v = calibrate(raw, tr.k.matcher.n, m.calibration, tr.k.norm);
          const end = f + 1;
          const b = this.best.get(name);
          if (!b || v > b.score) this.best.set(name, { score: v, start: start * fs, end: end * fs });
          // section 6: the peak after a threshold crossing, the refractory period
          if (tr.pending) {
            if (v > tr.pending.score) tr.pending = { score: v, start, end };
            tr.age += 1;
            if (v < tr.pending.score || tr.age >= hold) dets.push(this.emit(tr));
          }
          const above = v >= tr.k.threshold;
          if (above && !tr.above && !tr.pending) {
            if (end * fs - tr.lastFire >= this.refractoryS && start * fs >= tr.lastFire) {
              tr.pending = { score: v, start, end };
              tr.age = 0;
            }
          }
          tr.above = above;
        }
      }
      this.frames += F;
      const drop = Math.max(0, this.emb.length - this.keep);
      if (drop) { this.emb.splice(0, drop); this.voiced.splice(0, drop); this.embFirst += drop; }
    }
    return dets;
  }

  /** Per keyword, this chunk's factors from the embedding head: the candidates' (first-stage confidence
   * >= min_confidence) from the head's best path in the window, the lowest factor elsewhere. */
  async headFactors(tracks, raws, starts, F) {
    const sp = this.sp;
    const m = sp.m;
    const h = sp.head.cfg;
    const lowest = sp.head.factor(SCORE_FLOOR);
    const factors = tracks.map(() => new Float64Array(F).fill(lowest));
    const cand = tracks.map((tr, k) => Array.from(raws[k], (r) => calibrate(r, tr.k.matcher.n, m.calibration, tr.k.norm) >= h.min_confidence));
    let minStart = Infinity;
    cand.forEach((c, k) => c.forEach((x, t) => { if (x && starts[k][t] < minStart) minStart = starts[k][t]; }));
    if (minStart === Infinity) {
      this.headEvent = null;
      return factors;
    }
    const perFrame = Math.round(m.frame_seconds * m.sample_rate);
    const first = Math.max(this.audioFirst, minStart * perFrame - Math.trunc(h.before_s * m.sample_rate));
    const end = this.audioFirst + this.audio.length;
    let ev = this.headEvent;
    if (!ev || first < ev.start || end - ev.start > this.audioKeep) ev = this.headEvent = new HeadEvent(first);
    const lp = await ev.logProbs(sp.head, this.audio.subarray(ev.start + ev.audio.length - this.audioFirst));
    const llrs = lp.map((row) => frameScores(row, sp.posteriorWeight).llr);
    tracks.forEach((tr, k) => {
      if (!cand[k].some((x) => x)) return;
      let best = SCORE_FLOOR;
      const st = tr.k.matcher.initState(0);
      llrs.forEach((llr, t) => { best = Math.max(best, tr.k.matcher.step(llr, t, st)[0]); });
      const fk = sp.head.factor(best);
      cand[k].forEach((x, t) => { if (x) factors[k][t] = fk; });
    });
    return factors;
  }

  emit(tr) {
    const fs = this.sp.m.frame_seconds;
    const { score, start, end } = tr.pending;
    tr.pending = null;
    tr.lastFire = end * fs;
    return { keyword: tr.k.name, score, start_s: start * fs, end_s: end * fs, words: this.wordTimes(tr.k, start, end) };
  }

  wordTimes(k, start, end) {
    const sp = this.sp;
    if (!sp.table) return [];
    const a = Math.max(0, start - this.embFirst);
    const b = end - this.embFirst;
    const win = this.emb.slice(a, b);
    if (win.length < k.words.length) return [];
    const D = sp.table.shape[1];
    const rowOf = (c) => (c > sp.blank ? c - 1 : c);  // row r of the table is the r-th non-blank class
    const vecs = [];
    let i = 0;
    for (const w of k.wordPhonemes) {
      const v = new Float64Array(D);
      for (let j = 0; j < w.length; j++) {
        const r = rowOf(k.classes[i + j]);
        for (let d = 0; d < D; d++) v[d] += sp.table.data[r * D + d];
      }
      for (let d = 0; d < D; d++) v[d] /= w.length;
      vecs.push(v);
      i += w.length;
    }
    const segs = dspPartition(win, vecs, this.voiced.slice(a, b));
    if (!segs) return [];
    const fs = sp.m.frame_seconds;
    const first = this.embFirst + a;
    return segs.map(([s, e], j) => ({ word: k.words[j], start_s: (first + s) * fs, end_s: (first + e) * fs }));
  }
}
