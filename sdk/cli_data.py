"""`heron data ...`: the speech data engine from the command line (synth, vocab, pairs, stream)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

DEFAULT_NOISE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                 "data", "real_speech", "noise")


def _default_noise_dir() -> str | None:
    env = os.environ.get("HERON_NOISE_DIR")
    for cand in (env, DEFAULT_NOISE_DIR, os.path.join(os.getcwd(), "..", "shared", "data", "real_speech", "noise")):
        if cand and os.path.isdir(cand):
            return cand
    return None


def _registry(args):
    from heron.models.data.tts import VoiceRegistry

    engines = args.engines.split(",") if args.engines else None
    return VoiceRegistry(engines=engines, hold_out_fraction=args.hold_out_fraction)


def _synth(args) -> int:
    import soundfile as sf
    from heron.models.data.tts import SAMPLE_RATE, synthesize_many
    from heron.runtime.phonemes import pronounce

    pron = pronounce(args.text, max_words=None, max_phonemes=None)
    reg = _registry(args)
    voices = reg.sample(args.voices, split=args.split, seed=args.seed)
    audio = synthesize_many([(v, args.text) for v in voices], desc="synth")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (v, a) in enumerate(zip(voices, audio)):
        name = f"{i:03d}_{v.base_id.replace('/', '_').replace('+', '-')}.wav"
        sf.write(str(out / name), a, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"file": name, "voice": v.id, "seconds": round(len(a) / SAMPLE_RATE, 3)})
    (out / "voices.json").write_text(json.dumps({"text": args.text, "phonemes": " ".join(pron.with_boundaries()),
                                                 "seed": args.seed, "files": rows}, indent=1))
    print(f"{args.text!r} -> {' '.join(pron.with_boundaries())}")
    print(f"wrote {len(rows)} wavs from {len({v.base_id for v in voices})} distinct voices to {out}/")
    return 0


def _vocab(args) -> int:
    from heron.models.data.vocab import vocabulary

    phrases = vocabulary()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.write("text\tphonemes\tcount\n")
        for p in phrases[: args.limit or None]:
            f.write(f"{p.text}\t{' '.join(p.phonemes)}\t{p.count}\n")
    print(f"wrote {min(len(phrases), args.limit or len(phrases))} phrases to {out}")
    return 0


def _pairs(args) -> int:
    from collections import Counter

    from heron.models.data.pairs import make_pairs, write_pairs
    from heron.models.data.vocab import vocabulary

    reg = _registry(args)
    voices = [v.id for v in reg.sample(max(8, args.anchors), split=args.split, seed=args.seed)]
    pairs = make_pairs(vocabulary(), args.anchors, seed=args.seed, voices=voices)
    write_pairs(pairs, args.out)
    kinds = Counter(p.kind for p in pairs)
    print(f"wrote {len(pairs)} pairs to {args.out}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    if args.synth:
        import soundfile as sf
        from heron.models.data.tts import SAMPLE_RATE, Voice, synthesize_many

        audio = synthesize_many([(Voice.from_id(p.voice), p.audio_text) for p in pairs], desc="pairs")
        d = Path(args.synth)
        d.mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(audio):
            sf.write(str(d / f"{i:06d}.wav"), a, SAMPLE_RATE, subtype="PCM_16")
        print(f"wrote {len(audio)} wavs to {d}/ (row i of the csv is {{i:06d}}.wav)")
    return 0


def _stream(args) -> int:
    from heron.models.data.augment import NoiseBank
    from heron.models.data.streams import StreamConfig, build_stream
    from heron.models.data.vocab import corpus_sentences

    sentences = [s for s in corpus_sentences() if 3 <= len(s.split()) <= 20][:20000]
    from heron.runtime.phonemes import pronounce

    for text in args.keyword or []:
        pronounce(text)  # an empty or unpronounceable keyword is refused before any synthesis
    cfg = StreamConfig(minutes=args.minutes, keywords=tuple(args.keyword or ["hey heron"]), keywords_per_minute=args.rate,
                       split=args.split, seed=args.seed)
    noise_dir = args.noise_dir or _default_noise_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = build_stream(cfg, out / "stream.wav", out / "labels.csv", sentences, _registry(args),
                          NoiseBank(noise_dir))
    print(f"wrote {args.minutes} min stream to {out}/stream.wav with {len(labels)} keyword occurrences "
          f"(labels: {out}/labels.csv; noise from {noise_dir or 'synthetic colours only'})")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("data", help="speech data engine: synthesize, vocabulary, pairs, streams, bench",
                       formatter_class=formatter)
    dsub = p.add_subparsers(dest="data_verb", metavar="DATA_VERB", required=True)
    _add_bench(dsub, formatter)

    def common(q):
        q.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same output bytes)")
        q.add_argument("--engines", default=None, help="comma-separated TTS engines (default: all installed)")
        q.add_argument("--split", default="train", choices=["train", "heldout", "all"], help="voice split")
        q.add_argument("--hold-out-fraction", type=float, default=0.15, help="share of engine voices held out")

    q = dsub.add_parser("synth", help="synthesize a text in several distinct voices", formatter_class=formatter)
    q.add_argument("--text", required=True, help="text to speak")
    q.add_argument("--voices", type=int, default=10, help="number of distinct voices")
    q.add_argument("--out", required=True, help="output folder")
    common(q)
    q.set_defaults(func=_synth)

    q = dsub.add_parser("vocab", help="write the keyword vocabulary (words and 1-4 word phrases)",
                        formatter_class=formatter)
    q.add_argument("--out", required=True, help="output TSV")
    q.add_argument("--limit", type=int, default=0, help="most frequent N only (0 = all)")
    q.set_defaults(func=_vocab)

    q = dsub.add_parser("pairs", help="LibriPhrase-style pairs: positive, easy, hard, contains",
                        formatter_class=formatter)
    q.add_argument("--anchors", type=int, default=100, help="anchor phrases (4 pairs each)")
    q.add_argument("--out", required=True, help="output CSV")
    q.add_argument("--synth", default=None, help="also synthesize the pair audio into this folder (default: pairs only, no audio)")
    common(q)
    q.set_defaults(func=_pairs)

    q = dsub.add_parser("stream", help="long labelled stream for always-on evaluation", formatter_class=formatter)
    q.add_argument("--minutes", type=float, default=10.0, help="stream length")
    q.add_argument("--keyword", action="append", default=None, help="keyword text (repeatable; default: 'hey heron')")
    q.add_argument("--rate", type=float, default=2.0, help="keyword occurrences per minute")
    q.add_argument("--noise-dir", default=None, help="folder of background-noise wavs (default: shared noise)")
    q.add_argument("--out", required=True, help="output folder (stream.wav, labels.csv)")
    common(q)
    q.set_defaults(func=_stream, split="heldout")


def _bench(args) -> int:
    from heron.models.data.tts import throughput
    from heron.runtime.metrics import machine

    print(f"# heron data bench  ({time.strftime('%Y-%m-%d')}, {machine()}, {args.workers} workers, "
          f"{args.utterances} uncached utterances per engine)")
    print("| engine | voices | utterances/s | seconds of audio per second |")
    print("|---|---|---|---|")
    for r in throughput(args.utterances, args.workers, args.seed):
        if r["voices"] is None:
            print(f"| {r['engine']} | not installed | - | - |")
        else:
            print(f"| {r['engine']} | {r['voices']} | {r['utterances_per_s']:.1f} | {r['audio_s_per_s']:.0f} |")
    return 0


def _add_bench(sub, formatter) -> None:
    """`heron data bench`: TTS throughput per engine."""
    q = sub.add_parser("bench", help="TTS throughput per engine (BENCHMARKS.md)", formatter_class=formatter)
    q.add_argument("--utterances", type=int, default=60, help="utterances per engine")
    q.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel synthesis workers")
    q.add_argument("--seed", type=int, default=0, help="voice sampling seed")
    q.set_defaults(func=_bench, use_cache=False)

