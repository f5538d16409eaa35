// Node glue for heron.js: bundles and keyword files from disk, WAV files, onnxruntime-node.
import { readFile, realpath } from 'node:fs/promises';
import path from 'node:path';

import { HeronError, KeywordSpotter } from './heron.js';

/** Load a bundle folder; files are read only from inside it (a symlink out of the bundle is refused).
 * onnxruntime-node's graph loader recurses deeply: call this where the native stack is large (cli.js runs in
 * a worker thread with resourceLimits.stackSizeMb = 64; on the main thread a long argv once overflowed it). */
export async function loadSpotter(bundleDir, { threads = 1 } = {}) {
  let ort;
  try {
    ort = (await import('onnxruntime-node')).default;
  } catch (e) {
    throw new HeronError(`onnxruntime-node is not installed: npm install --ignore-scripts --prefix runtime/js (${e.code || e.message})`);
  }
  let root;
  try {
    root = await realpath(bundleDir);
  } catch {
    throw new HeronError(`${bundleDir}: no such bundle folder`);
  }
  const read = async (rel) => {
    const p = path.join(root, rel);
    let real;
    try {
      real = await realpath(p);
    } catch {
      throw new HeronError(`${bundleDir}/${rel}: missing from the bundle`);
    }
    if (real !== root && !real.startsWith(root + path.sep)) throw new HeronError(`${bundleDir}/${rel}: leaves the bundle (symlink)`);
    return new Uint8Array(await readFile(real));
  };
  return KeywordSpotter.load(read, ort, { where: bundleDir, sessionOptions: { intraOpNumThreads: threads } });
}

export async function addKeywordFile(spotter, file) {
  let bytes;
  try {
    bytes = new Uint8Array(await readFile(file));
  } catch {
    throw new HeronError(`${file}: no such keyword file`);
  }
  return spotter.addKeywordFile(bytes, file);
}

/** A RIFF/WAVE file -> {sampleRate, samples: Float32Array mono}: 16-bit PCM or 32-bit float; channels averaged. */
export function decodeWav(buf, where) {
  const b = new Uint8Array(buf);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const tag = (o) => String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]);
  if (b.length < 12 || tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new HeronError(`${where}: not a WAV file (this runtime reads WAV; convert other formats first)`);
  let fmt = null;
  let data = null;
  for (let o = 12; o + 8 <= b.length;) {
    const id = tag(o);
    const size = v.getUint32(o + 4, true);
    const body = o + 8;
    if (id === 'fmt ') {
      let format = v.getUint16(body, true);
      if (format === 0xfffe && size >= 26) format = v.getUint16(body + 24, true);
      fmt = { format, channels: v.getUint16(body + 2, true), rate: v.getUint32(body + 4, true), bits: v.getUint16(body + 14, true) };
    } else if (id === 'data') {
      data = b.subarray(body, Math.min(b.length, body + size));
    }
    o = body + size + (size % 2);
  }
  if (!fmt || !data) throw new HeronError(`${where}: a WAV file without fmt or data chunk`);
  const { format, channels, rate, bits } = fmt;
  if (channels < 1) throw new HeronError(`${where}: no channels`);
  const width = bits / 8;
  if (!((format === 1 && bits === 16) || (format === 3 && bits === 32))) {
    throw new HeronError(`${where}: ${bits}-bit WAV format ${format} is not supported (16-bit PCM or 32-bit float)`);
  }
  const frames = Math.floor(data.length / (width * channels));
  if (frames === 0) throw new HeronError(`${where}: no audio samples`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(frames);
  for (let i = 0; i < frames; i++) {
    let s = 0;
    for (let c = 0; c < channels; c++) {
      const o = (i * channels + c) * width;
      s += format === 1 ? dv.getInt16(o, true) / 32768 : dv.getFloat32(o, true);
    }
    out[i] = channels === 1 ? s : s / channels;
  }
  return { sampleRate: rate, channels, samples: out };
}

export async function readWav(file) {
  let buf;
  try {
    buf = await readFile(file);
  } catch {
    throw new HeronError(`${file}: no such file`);
  }
  return decodeWav(buf, file);
}
