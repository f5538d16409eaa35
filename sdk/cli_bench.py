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
