"""`heron kws ...`: keyword spotting from the command line.

`heron kws score --keyword TEXT FILE...` is a stable interface (outside graders use it): one JSON
object per file on stdout, {"file", "score", "start_s", "end_s"}; a file that cannot be scored gets
{"file", "score": null, "error"} and the others still score; the exit code is 1 when any file failed.
`--keyword-file F` (from `heron kws enroll TEXT --out F`) instead of `--keyword` scores as a device does.
"""
from __future__ import annotations

import json
import sys

MODEL_SHA256_HELP = ("the bundle's identity (its manifest.sha256) as you recorded it: any other manifest is refused "
                     "(default: none; the shipped bundle's is pinned in heron)")


def _score(args) -> int:
    from heron.runtime.audio import AudioFile
    from heron.runtime.spotter import KeywordSpotter

    spotter = KeywordSpotter.load(args.model, int8=args.int8, threads=args.threads, sha256=args.model_sha256)
    if (args.keyword is None) == (args.keyword_file is None):
        raise ValueError("give the keyword as --keyword TEXT or as --keyword-file F (heron kws enroll TEXT --out F)")
    if args.keyword_file is not None:  # what a device loads: a mobile bundle takes only keyword files
        kw = spotter.add_keyword_file(args.keyword_file)
    else:
        kw = spotter.enroll(args.keyword)
        _note_guesses(kw.pronunciation, "heron kws score")
    failed = 0
    for path in args.files:
        try:
            audio = AudioFile(path)  # the same rule as `heron listen` (runtime/audio.py)
            if audio.channels > 1:
                print(f"heron kws score: note: {path} has {audio.channels} channels, mixed down to mono", file=sys.stderr)
            score, start, end = spotter.score_file(audio.blocks(), kw.name, sample_rate=audio.sample_rate)
            rec = {"file": path, "score": round(score, 6), "start_s": None if start is None else round(start, 3),
                   "end_s": None if end is None else round(end, 3)}
            if args.strict_times and score < kw.threshold:
                rec["start_s"] = rec["end_s"] = None
        except ValueError as e:
            failed += 1
            rec = {"file": path, "score": None, "start_s": None, "end_s": None, "error": str(e)}
            print(f"heron kws score: {e}" if str(path) in str(e) else f"heron kws score: {path}: {e}", file=sys.stderr)
        print(json.dumps(rec), flush=True)
    if failed:
        print(f"heron kws score: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _note_guesses(pron, prog: str) -> None:
    from heron.runtime.phonemes import describe_guesses

    guessed = describe_guesses(pron)
    if guessed:
        print(f"{prog}: note: keyword {pron.text!r}: {guessed}", file=sys.stderr)


def _enroll(args) -> int:
    import time

    from heron.runtime.phonemes import describe_guesses, pronounce

    t0 = time.perf_counter()
    pron = pronounce(args.text)
    cold = (time.perf_counter() - t0) * 1000  # loads the dictionary (and g2p model) once per process
    from heron.runtime.phonemes import word_to_phonemes

    word_to_phonemes.cache_clear()  # time a fresh lookup, not the word cache: what a new keyword costs
    t0 = time.perf_counter()
    pronounce(args.text)
    dt = (time.perf_counter() - t0) * 1000
    print(f"keyword:   {args.text!r} -> words {list(pron.words)}")
    print(f"phonemes:  {' '.join(pron.with_boundaries())}  ({len(pron.phonemes)} phonemes, G2P {dt:.1f} ms; "
          f"first call {cold:.0f} ms loads the dictionary)")
    guessed = describe_guesses(pron)
    if guessed:
        print(f"warning:   {guessed}")
    if len(pron.phonemes) < 6:
        print("warning:   fewer than 6 phonemes: short keywords fire more often on other speech; "
              "consider a longer phrase")
    if args.out is not None:
        _write_keyword_file(args)
    if args.confusables <= 0:
        return 0
    try:  # the closest common words and phrases: what the keyword is most easily confused with
        from heron.models.data.vocab import vocabulary, vocabulary_path
        from heron.runtime.phonemes import levenshtein

        if not vocabulary_path().exists():
            print(f"(building the table of common phrases once, about 15 s; cached in {vocabulary_path()})",
                  file=sys.stderr, flush=True)
        ph = pron.phonemes
        near = sorted((levenshtein(ph, p.phonemes), -p.count, p.text) for p in vocabulary()[:20000]
                      if abs(len(p.phonemes) - len(ph)) <= 2 and p.phonemes != ph)[: args.confusables]
        print("closest:   " + ", ".join(f"{t!r} ({d} phoneme edit{'s' if d > 1 else ''})" for d, _, t in near))
        if near and near[0][0] <= 1:
            print("warning:   a common phrase is one phoneme away: expect false accepts on it")
    except ImportError:
        pass  # the vocabulary comes with the data engine; the keyword works without this report
    return 0


def _write_keyword_file(args) -> None:
    from pathlib import Path

    from heron.runtime.keyword_file import write_keyword_file
    from heron.runtime.spotter import KeywordSpotter

    spotter = KeywordSpotter.load(args.model, sha256=args.model_sha256)
    kw = spotter.enroll(args.text, sensitivity=args.sensitivity, name=args.name)
    path = write_keyword_file(spotter.keyword_file(kw), args.out)
    print(f"keyword file: {path} ({Path(path).stat().st_size} bytes; threshold {kw.threshold:.3f}; for the bundle "
          f"{spotter.bundle.identity[:16]}... and mobile bundles made from it)")


def _add_enroll(sub, formatter) -> None:
    q = sub.add_parser("enroll", help="show a keyword's phonemes and a quality report; --out writes a keyword file",
                       formatter_class=formatter)
    q.add_argument("text", help="keyword text")
    q.add_argument("--confusables", type=int, default=5, help="how many close common phrases to list (0: none, no phrase table)")
    q.add_argument("--out", default=None,
                   help="write a keyword file (e.g. hey_heron.kw) that device runtimes load: KeywordSpotter."
                        "add_keyword_file, runtime/js (default: none, only the report)")
    q.add_argument("--model", default=None, help="with --out: the bundle to enroll with (default: the shipped model)")
    q.add_argument("--model-sha256", default=None, help=MODEL_SHA256_HELP)
    q.add_argument("--sensitivity", type=float, default=0.5, help="with --out: 0..1, higher fires more easily")
    q.add_argument("--name", default=None, help="with --out: the keyword's name (default: its words)")
    q.set_defaults(func=_enroll)


def register(sub, formatter) -> None:
    """`heron kws VERB`: everything about keyword spotting, noun first; `heron enroll` and `heron listen`
    are short aliases of `heron kws enroll` and `heron kws listen`."""
    from heron.cli_kws_build import add_kws_export, add_kws_train
    from heron.listen import add_listen

    p = sub.add_parser("kws", help="keyword spotting: score, enroll, listen, train, eval, export, bench",
                       formatter_class=formatter)
    ksub = p.add_subparsers(dest="kws_verb", metavar="KWS_VERB", required=True)
    q = ksub.add_parser("score", help="score audio files for a keyword given as text (JSON lines)",
                        formatter_class=formatter)
    q.add_argument("--keyword", default=None, help="keyword text, e.g. 'hey heron' (default: none; this or --keyword-file)")
    q.add_argument("--keyword-file", default=None,
                   help="or a keyword file (heron kws enroll TEXT --out F), e.g. for a mobile bundle (default: none)")
    q.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    q.add_argument("--model-sha256", default=None, help=MODEL_SHA256_HELP)
    q.add_argument("--int8", action="store_true", help="use the int8 encoder")
    q.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    q.add_argument("--strict-times", action="store_true", help="null times when the score is below threshold")
    q.add_argument("files", nargs="+", help="mono audio files (wav, flac, ogg, mp3, ...; any sample rate)")
    q.set_defaults(func=_score)
    _add_enroll(ksub, formatter)
    add_listen(ksub, formatter)
    add_kws_train(ksub, formatter)
    _add_eval(ksub, formatter)
    _add_per(ksub, formatter)
    add_kws_export(ksub, formatter)
    _add_bench(ksub, formatter)
    _add_enroll(sub, formatter)  # aliases: heron enroll, heron listen
    add_listen(sub, formatter)


def _eval(args) -> int:
    import json as _json

    from heron.models.eval_kws import run_eval

    sets = [x.strip() for x in args.sets.split(",") if x.strip()]
    unknown = sorted(set(sets) - set(EVAL_SETS))
    if unknown or not sets:
        raise ValueError(f"--sets takes a comma-separated list of {', '.join(EVAL_SETS)}; got {args.sets!r}")
    res = run_eval(args.model, sets, args.json, int8=args.int8, anchors=args.anchors,
                   stream_minutes=args.stream_minutes)
    print(_json.dumps(res, indent=1))
    return 0


EVAL_SETS = ("tts", "real", "stream", "negatives")


def _per(args) -> int:
    import json as _json

    from heron.models.eval_per import run

    emb = None
    if args.head:  # the frames bundles compute (the export package's sequence form of the embedding graph)
        from heron.export.embedding_head import sequence_speech_embedding
        emb = sequence_speech_embedding(args.threads)
    res = run(args.checkpoint, args.data or [], split=args.split, tts=args.tts, threads=args.threads, head=args.head,
              emb=emb)
    text = _json.dumps(res, indent=1)
    print(text)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(text + "\n")
    return 0


def _add_per(sub, formatter) -> None:
    q = sub.add_parser("per", help="phoneme error rate of an encoder checkpoint or an embedding head on real held-out "
                                   "speech and held-out TTS voices (needs torch)", formatter_class=formatter)
    which = q.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="encoder checkpoint folder or .safetensors file (default: none; this or --head)")
    which.add_argument("--head", help="an embedding head's folder (heron kws train-head), on speech_embedding frames "
                                      "(default: none; this or --checkpoint)")
    q.add_argument("--data", action="append", default=None,
                   help="repeatable: a TSV manifest (its --split rows), a CSV (audio, text) or a LibriSpeech folder "
                        "(default: none, held-out TTS voices only)")
    q.add_argument("--split", default="test", help="which rows of TSV manifests")
    q.add_argument("--tts", type=int, default=300, help="held-out-voice TTS utterances (0: none)")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.add_argument("--json", default=None, help="also write the results to this JSON file (default: print only)")
    q.set_defaults(func=_per)


def _add_eval(sub, formatter) -> None:
    q = sub.add_parser("eval", help="AUC/EER on held-out TTS voices and real speech; FRR at FA/h on a stream",
                       formatter_class=formatter)
    q.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    q.add_argument("--sets", default="tts,real,stream", help="comma-separated: tts, real, stream, negatives")
    q.add_argument("--anchors", type=int, default=300, help="anchor phrases for the TTS pairs")
    q.add_argument("--stream-minutes", type=float, default=10.0, help="length of the evaluation stream")
    q.add_argument("--int8", action="store_true", help="evaluate the int8 encoder")
    q.add_argument("--json", default=None, help="also write the results to this JSON file (default: print only)")
    q.set_defaults(func=_eval)


def _add_bench(sub, formatter) -> None:
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
    q.set_defaults(func=_bench)


def _bench(args) -> int:
    from heron.runtime.bench import spotter_bench

    print(json.dumps(spotter_bench(args.model, args.real_speech, args.seconds, args.long_stream), indent=1))
    return 0
