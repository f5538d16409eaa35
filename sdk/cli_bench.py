"""`heron bench ...`: benchmarks whose results go to BENCHMARKS.md (never asserted by tests)."""
from __future__ import annotations

import os
import platform
import time


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def _synth(args) -> int:
    from heron.models.data.tts import ENGINES, VoiceRegistry, synthesize_many
    from heron.models.data.vocab import vocabulary

    phrases = [p.text for p in vocabulary() if p.n_words >= 2][: args.utterances * 3]
    print(f"# heron bench synth  ({time.strftime('%Y-%m-%d')}, {machine()}, {args.workers} workers, "
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


def register(sub, formatter) -> None:
    p = sub.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)", formatter_class=formatter)
    bsub = p.add_subparsers(dest="bench_verb", metavar="BENCH", required=True)
    q = bsub.add_parser("synth", help="TTS throughput per engine", formatter_class=formatter)
    q.add_argument("--utterances", type=int, default=60, help="utterances per engine")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel synthesis workers")
    q.add_argument("--seed", type=int, default=0, help="voice sampling seed")
    q.set_defaults(func=_synth, use_cache=False)
    import os as _os

    here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    q = bsub.add_parser("kws", help="spotter speed (RTF, 1 thread), enrollment, gate skipping, bundle size",
                        formatter_class=formatter)
    q.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    q.add_argument("--model-checkpoint", default=_os.path.join(here, "models", "weights", "kws-base"),
                   help="torch checkpoint for the gate-skipping timing")
    q.add_argument("--real-speech", default=_os.path.join(here, "..", "shared", "data", "real_speech"),
                   help="folder with sentences/, keywords/ and noise/ wavs")
    q.add_argument("--seconds", type=int, default=120, help="seconds of speech and of noise to time")
    q.set_defaults(func=_kws)


def _kws(args) -> int:
    """Runtime speed (1 thread), enrollment latency, gate skipping on speech vs noise, bundle size."""
    import glob
    import json

    import numpy as np
    import soundfile as sf

    from heron.runtime.spotter import KeywordSpotter

    shared = args.real_speech
    speech_files = sorted(glob.glob(f"{shared}/sentences/*.wav")) + sorted(glob.glob(f"{shared}/keywords/*/*.wav"))[:40]
    noise_files = sorted(glob.glob(f"{shared}/noise/*.wav"))
    if not speech_files or not noise_files:
        raise FileNotFoundError(f"benchmark audio not found under {shared} (pass --real-speech)")
    speech = np.concatenate([sf.read(f, dtype="float32")[0] for f in speech_files])[: 16000 * args.seconds]
    noise = np.concatenate([sf.read(f, dtype="float32")[0] for f in noise_files])[: 16000 * args.seconds]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "threads": 1}
    for int8 in (False, True):
        sp = KeywordSpotter.load(args.model, int8=int8, threads=1)
        tag = "int8" if int8 else "fp32"
        t0 = time.perf_counter()
        sp.log_probs(speech)
        res[f"rtf_encoder_{tag}"] = round((time.perf_counter() - t0) / (len(speech) / 16000), 4)
        for n_kw in (1, 10):
            sp.keywords.clear()
            words = ["hey heron", "view glass", "snowboy", "okay computer", "lights on", "lights off",
                     "stop music", "next track", "call mom", "volume up"][:n_kw]
            for w in words:
                sp.enroll(w)
            st = sp.stream()
            t0 = time.perf_counter()
            for i in range(0, len(speech), 1600):
                st.accept(speech[i:i + 1600])
            res[f"rtf_spotter_{n_kw}kw_{tag}"] = round((time.perf_counter() - t0) / (len(speech) / 16000), 4)
        if not int8:
            g_speech = np.stack(sp.stream().spotter.log_probs(speech)[1]) < 0.5
            g_noise = np.stack(sp.log_probs(noise)[1]) < 0.5
            res["gates_skipped_speech"] = round(float(g_speech.mean()), 3)
            res["gates_skipped_noise"] = round(float(g_noise.mean()), 3)
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
    res["bundle_mb"] = {k: round(v["bytes"] / 1e6, 2) for k, v in man["files"].items()}
    res.update(_torch_skip_timing(args.model_checkpoint, speech, noise))
    print(json.dumps(res, indent=1))
    return 0


def _torch_skip_timing(checkpoint: str, speech, noise) -> dict:
    """Wall time per second of audio with gates really skipping modules (torch, batch 1, 1 thread)."""
    try:
        import torch

        from heron.models.train_kws import load_encoder
    except ImportError:
        return {"torch_skip_timing": "needs heron[train]"}
    torch.set_num_threads(1)
    model, _ = load_encoder(checkpoint)
    out = {}
    for name, audio in (("speech", speech), ("noise", noise)):
        for skip in (False, True):
            st = model.init_state(1)
            n = model.config.chunk_samples
            x = torch.from_numpy(audio[: len(audio) // n * n]).view(1, -1)
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, x.shape[1], n):
                    _, _, _, st = model.forward_chunk(x[:, i:i + n], st, skip=skip)
            out[f"torch_rtf_{name}_{'skip' if skip else 'noskip'}"] = round((time.perf_counter() - t0) / (x.shape[1] / 16000), 4)
    return out
