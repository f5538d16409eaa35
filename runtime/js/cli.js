#!/usr/bin/env node
// node runtime/js/cli.js --bundle DIR --keyword-file F [--keyword-file G ...] a.wav [b.wav ...]
// One JSON object per file and keyword on stdout, like `heron kws score`:
// {"file", "keyword", "score", "start_s", "end_s", "detections": [{score, start_s, end_s, words}]};
// a file that cannot be scored gets {"file", "score": null, "error"}; exit code 1 when any failed.
import { HeronError } from './heron.js';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';

import { addKeywordFile, loadSpotter, readWav } from './node.js';

const USAGE = 'usage: node runtime/js/cli.js --bundle DIR --keyword-file F [--keyword-file G ...] [--threads N] FILE.wav...';

function parseArgs(argv) {
  const a = { bundle: null, keywordFiles: [], threads: 1, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new HeronError(`${x} needs a value; ${USAGE}`);
      return argv[++i];
    };
    if (x === '--bundle') a.bundle = val();
    else if (x === '--keyword-file') a.keywordFiles.push(val());
    else if (x === '--threads') {
      a.threads = Number(val());
      if (!Number.isInteger(a.threads) || a.threads < 1 || a.threads > 256) throw new HeronError('--threads must be an integer in [1, 256]');
    } else if (x === '-h' || x === '--help') { console.log(USAGE); process.exit(0); }
    else if (x.startsWith('--')) throw new HeronError(`unknown option ${x}; ${USAGE}`);
    else a.files.push(x);
  }
  if (!a.bundle || a.keywordFiles.length === 0 || a.files.length === 0) throw new HeronError(USAGE);
  return a;
}

const r = (x, d) => (x === null ? null : Number(x.toFixed(d)));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const spotter = await loadSpotter(args.bundle, { threads: args.threads });
  for (const f of args.keywordFiles) await addKeywordFile(spotter, f);
  let failed = 0;
  for (const file of args.files) {
    try {
      const wav = await readWav(file);
      if (wav.sampleRate !== spotter.m.sample_rate) {
        throw new HeronError(`${file}: ${wav.sampleRate} Hz; this runtime takes ${spotter.m.sample_rate} Hz audio (resample it first)`);
      }
      if (wav.channels > 1) process.stderr.write(`heron-kws: note: ${file} has ${wav.channels} channels, mixed down to mono\n`);
      const res = await spotter.scoreAudio(wav.samples);
      for (const [name, x] of Object.entries(res)) {
        const dets = x.detections.map((d) => ({ score: r(d.score, 6), start_s: r(d.start_s, 3), end_s: r(d.end_s, 3),
          words: d.words.map((w) => ({ word: w.word, start_s: r(w.start_s, 3), end_s: r(w.end_s, 3) })) }));
        console.log(JSON.stringify({ file, keyword: name, score: r(x.score, 6), start_s: r(x.start_s, 3), end_s: r(x.end_s, 3), detections: dets }));
      }
    } catch (e) {
      if (!(e instanceof HeronError)) throw e;
      failed += 1;
      console.log(JSON.stringify({ file, score: null, start_s: null, end_s: null, error: e.message }));
      process.stderr.write(`heron-kws: ${e.message}\n`);
    }
  }
  if (failed) process.stderr.write(`heron-kws: ${failed} of ${args.files.length} files failed\n`);
  return failed ? 1 : 0;
}

function fail(e) {
  process.stderr.write(`heron-kws: ${e instanceof HeronError ? e.message : (e && e.stack) || e}\n`);
  return 2;
}

// The work runs in a worker thread with a 64 MB stack: onnxruntime's graph loader recurses deeply, and on the
// main thread (8 MB, less what the arguments and environment take) a long file list made it overflow
// (a segmentation fault with ~340 files).
if (isMainThread) {
  let code = null;  // the worker's answer; without one (it called process.exit, e.g. --help), its exit code
  const w = new Worker(new URL(import.meta.url), { argv: process.argv.slice(2), resourceLimits: { stackSizeMb: 64 } });
  w.on('message', (c) => { code = c; });
  w.on('error', (e) => { code = fail(e); });
  w.on('exit', (exitCode) => process.exit(code ?? exitCode));
} else {
  main().then((c) => parentPort.postMessage(c), (e) => parentPort.postMessage(fail(e)));
}
