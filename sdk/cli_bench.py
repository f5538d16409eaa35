"""`heron kws|lm|data bench`: benchmarks whose results go to BENCHMARKS.md (never asserted by tests)."""
from __future__ import annotations

import os
import time

from heron.runtime.manifest import GATE_NAMES
from heron.runtime.metrics import machine


def _synth(args) -> int:
    from heron.models.data.tts import ENGINES, VoiceRegistry, synthesize_many
    from heron.models.data.vocab import vocabulary

    phrases = [p.text for p in vocabulary() if p.n_words >= 2][: args.utterances * 3]
    print(f"# heron data bench  ({time.strftime('%Y-%m-%d')}, {machine()}, {args.workers} workers, "
          f"{args.utterances} uncached utterances per engine)")
    print("| engine | voices | utterances/s | seconds of audio per second |")
    print("|---|---|---|---|")
    for name, eng in ENGINES.items():
        if not eng.available():
            print(f"| {name} | not installed | - | - |")
            continue
        reg = VoiceRegistry(engines=[name], hold_out_fraction=0.0)
        voices = reg.sample(args.utterances, seed=args.seed)
        # a fresh text per job so nothing comes from the cache
        stamp = str(time.time_ns())
        jobs = [(v, f"{phrases[i % len(phrases)]} {stamp[-4:]}") for i, v in enumerate(voices)]
        from heron.models.data import tts

        t0 = time.perf_counter()
        audio = synthesize_many(jobs, workers=args.workers, progress=False)
        dt = time.perf_counter() - t0
        secs = sum(len(a) for a in audio) / tts.SAMPLE_RATE
        print(f"| {name} | {len(eng.base_voices())} | {len(jobs) / dt:.1f} | {secs / dt:.0f} |")
    return 0


def add_synth_bench(sub, formatter) -> None:
    """`heron data bench`: TTS throughput per engine."""
    q = sub.add_parser("bench", help="TTS throughput per engine (BENCHMARKS.md)", formatter_class=formatter)
    q.add_argument("--utterances", type=int, default=60, help="utterances per engine")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel synthesis workers")
    q.add_argument("--seed", type=int, default=0, help="voice sampling seed")
    q.set_defaults(func=_synth, use_cache=False)


def add_kws_bench(sub, formatter) -> None:
    """`heron kws bench`: spotter speed, enrollment, gate skipping, bundle size."""
    from heron.paths import models_dir

    q = sub.add_parser("bench", help="spotter speed (RTF, 1 thread), enrollment, gate skipping, bundle size",
                       formatter_class=formatter)
    q.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    q.add_argument("--real-speech", default=str(models_dir().parents[1] / "shared" / "data" / "real_speech"),
                   help="folder with sentences/, keywords/ and noise/ wavs")
    q.add_argument("--seconds", type=int, default=120, help="seconds of speech and of noise to time")
    q.add_argument("--long-stream", default=None,
                   help="also stream this long wav (e.g. from `heron data stream --minutes 60`) and log memory "
                        "(default: none)")
    q.set_defaults(func=_kws)


def add_lm_bench(sub, formatter) -> None:
    """`heron lm bench`: every decoding method on the same prompts and thread budget."""
    q = sub.add_parser("bench", help="LM decoding: plain vs draft / MTP / Mirror speculative decoding "
                                     "(acceptance, beta, c, predicted vs measured speedup, latency)",
                       formatter_class=formatter)
    q.add_argument("--model", default=None, help="target checkpoint (default: the shipped lm-nano)")
    q.add_argument("--draft", default=None, help="ONNX draft bundle (default: the shipped lm-draft)")
    q.add_argument("--mtp", default=None, help="MTP adapter (default: the model's own)")
    q.add_argument("--methods", nargs="+", default=["none", "draft", "mtp", "mirror", "lookup"], help="methods to run")
    q.add_argument("--repeats", type=int, default=3,
                   help="runs of every method, interleaved; tokens/s is their median, with min and max")
    q.add_argument("--prompts", type=int, default=12, help="held-out prompts")
    q.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt")
    q.add_argument("--threads", type=int, default=2, help="total CPU thread budget of every method")
    q.add_argument("--gamma", type=int, default=4, help="draft tokens per round")
    q.add_argument("--kappa", type=int, default=2, help="Mirror-SD: early-exit candidates per position")
    q.add_argument("--exit-layer", type=int, default=2, help="Mirror-SD: early-exit layer")
    q.add_argument("--target-device", default="cpu", help="torch device of the target (cpu, cuda, mps)")
    q.add_argument("--json", default=None, help="also write the full report to this file (default: print only)")
    q.set_defaults(func=_lm)


def _lm(args) -> int:
    import json
    from pathlib import Path

    from heron import bench_lm as bench

    o = bench.BenchOptions(prompts=args.prompts, new_tokens=args.new_tokens, threads=args.threads, gamma=args.gamma,
                           kappa=args.kappa, exit_layer=args.exit_layer, methods=tuple(args.methods),
                           target_device=args.target_device, repeats=args.repeats)
    report = bench.run(args.model, o, draft=args.draft, mtp=args.mtp)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(bench.markdown(report))
    print(f"\nmachine: {report['machine']}; date {report['date']}" + (f"; full report: {args.json}" if args.json else ""))
    return 0


def _kws(args) -> int:
    """Runtime speed (1 thread), enrollment latency, gate skipping on speech vs noise, bundle size."""
    import glob
    import json

    import numpy as np
    import soundfile as sf

    from heron.runtime.audio import AudioFile
    from heron.runtime.spotter import KeywordSpotter

    if args.long_stream:
        AudioFile(args.long_stream)  # refused before the benchmark runs, not after it
    shared = args.real_speech
    speech_files = sorted(glob.glob(f"{shared}/sentences/*.wav")) + sorted(glob.glob(f"{shared}/keywords/*/*.wav"))[:40]
    noise_files = sorted(glob.glob(f"{shared}/noise/*.wav"))
    if not speech_files or not noise_files:
        raise FileNotFoundError(f"benchmark audio not found under {shared} (pass --real-speech)")
    speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in speech_files])[: 16000 * args.seconds]
    noise = np.concatenate([sf.read(f, dtype="float32")[0] for f in noise_files])[: 16000 * args.seconds]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": 1,
           "audio_s": {"speech": round(len(speech) / 16000, 1), "noise": round(len(noise) / 16000, 1)}}

    def rtf(fn, audio) -> float:
        t0 = time.perf_counter()
        fn(audio)
        return round((time.perf_counter() - t0) / (len(audio) / 16000), 5)

    seen = set()
    for kw in (dict(skip_gates=False), dict(skip_gates=False, int8=True), dict(skip_gates=True),
               dict(skip_gates=True, int8=True)):
        sp = KeywordSpotter.load(args.model, threads=1, speech_gate=kw["skip_gates"], **kw)  # a gate needs the modules
        name = f"{'modular_skipping' if sp.modular else 'single_graph'}_{'int8' if sp.int8 else 'fp32'}"
        if name in seen:  # e.g. an int8-only bundle: fp32 requests fall back to int8
            continue
        seen.add(name)
        res[f"rtf_encoder_{name}"] = {k: rtf(sp.encode, a) for k, a in (("speech", speech), ("noise", noise))}
        if sp.modular is not None:  # each stream counts what its closed gates skipped
            for label, audio in (("speech", speech), ("noise", noise)):
                st = sp.stream([])
                st.accept(audio)
                res[f"modules_skipped_{label}"] = dict(zip(GATE_NAMES, np.round(st.skipped_fraction, 3).tolist()))
    sp = KeywordSpotter.load(args.model, threads=1)  # the default configuration
    words = ["hey heron", "view glass", "snowboy", "okay computer", "lights on", "lights off",
             "stop music", "next track", "call mom", "volume up"]
    for n_kw in (1, 10):
        sp.keywords.clear()
        for w in words[:n_kw]:
            sp.enroll(w)

        def run(audio):
            st = sp.stream()
            for i in range(0, len(audio), 1600):
                st.accept(audio[i:i + 1600])

        res[f"rtf_spotter_{n_kw}kw"] = {k: rtf(run, a) for k, a in (("speech", speech), ("noise", noise))}
    sp = KeywordSpotter.load(args.model)
    sp.enroll("warm up")  # loads the dictionary and g2p model once
    times = []
    for w in ["hey heron", "ok jarvis", "lights on please", "snowboy", "zorblax activate"]:
        t0 = time.perf_counter()
        kw = sp.enroll(w)
        times.append((time.perf_counter() - t0) * 1000)
        sp.unenroll(kw.name)
    res["enroll_ms_median"] = round(float(np.median(times)), 2)
    res["enroll_ms_max"] = round(float(np.max(times)), 2)
    man = sp.bundle.manifest
    res["bundle_mb"] = {k: round(v.bytes / 1e6, 2) for k, v in man.files.items()}
    if args.long_stream:
        res["long_stream"] = _long_stream(args.model, args.long_stream)
    print(json.dumps(res, indent=1))
    return 0


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _long_stream(model, path: str) -> dict:
    """Stream a long wav in 100 ms pieces through one stream; resident memory every 10 minutes."""
    from heron.runtime.audio import AudioFile
    from heron.runtime.spotter import KeywordSpotter

    audio = AudioFile(path)  # any rate and channels; a missing or broken file is one line
    sp = KeywordSpotter.load(model, threads=1)
    sp.enroll("hey heron")
    st = sp.stream(sample_rate=audio.sample_rate)
    rss, done, dets = [], 0, 0
    step = audio.sample_rate // 10
    t0 = time.perf_counter()
    for block in audio.blocks(0.1):
        dets += len(st.accept(block))
        done += len(block)
        if done % (audio.sample_rate * 600) < step:
            rss.append(round(_rss_mb(), 1))
    secs = done / audio.sample_rate
    return {"audio_minutes": round(secs / 60, 1), "rtf": round((time.perf_counter() - t0) / secs, 5),
            "rss_mb_every_10_min": rss, "detections": dets}



