"""`heron export`: torch checkpoint -> self-describing mobile bundles (needs `pip install heron[export]`)."""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "weights" / "kws-base"


def _export_lm(args) -> int:
    try:
        from heron.export.onnx_lm import export_bundle
    except ImportError as e:
        raise ImportError(f"export needs torch and onnx: pip install 'heron[export]' ({e})") from e
    base = Path(args.out)
    outs = []
    if args.target in ("onnx", "all"):
        out = base / "onnx" if args.target == "all" else base
        # no int8 variant by default: dynamic quantization covers MatMul weights, and an MoE LM's experts
        # are gathered stacked tensors that stay float, so it saves only a few percent here
        export_bundle(args.lm, out, k=args.k, int8=args.lm_int8)
        outs.append(out)
    if args.target in ("coreml", "all"):
        from heron.export.coreml_lm import export_coreml_bundle
        out = base / "coreml" if args.target == "all" else base
        export_coreml_bundle(args.lm, out, k=args.k)
        outs.append(out)
    for o in outs:
        for f in sorted(o.iterdir()):
            print(f"{f}  {f.stat().st_size / 1e6 if f.is_file() else 0:.2f} MB")
    return 0


def _export(args) -> int:
    if args.lm:
        return _export_lm(args)
    try:
        from heron.export.onnx_kws import write_bundle
        from heron.models.train_kws import load_encoder
    except ImportError as e:
        raise ImportError(f"export needs torch and onnx: pip install 'heron[export]' ({e})") from e
    if args.target not in ("onnx", "coreml", "all"):
        raise ValueError(f"unknown target {args.target!r}; use onnx, coreml or all")
    model, meta = load_encoder(args.checkpoint)
    verifier = None
    if args.matcher:
        from heron.models.train_matcher import load_matcher

        te, mt, _, _, _ = load_matcher(args.matcher)
        verifier = (te, mt)
    base = Path(args.out)
    out = base / "onnx" if args.target == "all" else base
    cal_path = Path(args.matcher or args.checkpoint) / "calibration.json"
    calibration = json.loads(cal_path.read_text()) if cal_path.exists() and not args.recalibrate else None
    card = {k: meta.get(k) for k in ("step", "format")}
    if calibration is not None and args.threshold is not None:
        calibration = {**calibration, "threshold": args.threshold}
    from heron.models.calibrate_kws import build_background, fit_calibration
    from heron.runtime.spotter import KeywordSpotter

    bg_path = Path(args.checkpoint) / "background.npy"
    if bg_path.exists() and not args.recalibrate:
        import numpy as np

        background = np.load(bg_path, allow_pickle=False)
    else:  # encode the background bank with this encoder (first write: no background yet)
        calibration = None  # a new background changes the normalized scores: refit the calibration
        write_bundle(model, out, calibration=calibration or {}, model_meta=card, verifier=verifier, modular=False)
        background = build_background(KeywordSpotter.load(out))
        if Path(args.checkpoint).is_dir():
            import numpy as np

            np.save(bg_path, background, allow_pickle=False)
    write_bundle(model, out, calibration=calibration or {}, model_meta=card, verifier=verifier, background=background,
                 modular=False)
    if calibration is None:
        calibration = fit_calibration(KeywordSpotter.load(out), n_anchors=args.calibration_anchors)
        if args.threshold is not None:
            calibration["threshold"] = args.threshold
        if cal_path.parent.is_dir():
            cal_path.write_text(json.dumps(calibration, indent=1))
    table_path = Path(args.checkpoint) / "phoneme_table.npy"  # from `heron train matcher` (CTC forced alignment)
    table = None
    if table_path.exists():
        import numpy as np

        table = np.load(table_path, allow_pickle=False)
    write_bundle(model, out, calibration=calibration, model_meta=card, verifier=verifier, background=background,
                 int8_only=args.int8_only, phoneme_table=table)
    outs = [out]
    if args.target in ("coreml", "all"):
        cm = base / "coreml" if args.target == "all" else base
        write_bundle(model, cm, calibration=calibration, model_meta=card, target="coreml", background=background,
                     verifier=verifier)
        outs = [cm] if args.target == "coreml" else [out, cm]
        if args.target == "coreml":  # the ONNX files were only needed for calibration
            for f in ("encoder.onnx", "encoder.int8.onnx", "text_encoder.onnx", "matcher.onnx"):
                (cm / f).unlink(missing_ok=True)
    for o in outs:
        man = json.loads((o / "manifest.json").read_text())
        for k, f in man["files"].items():
            print(f"{o / f['path']}  {f['bytes'] / 1e6:.2f} MB  sha256 {f['sha256'][:16]}...")
    print(f"calibration: {man['calibration']}")
    if args.zip:
        import shutil

        for o in outs:
            archive = shutil.make_archive(str(o), "zip", root_dir=o)
            print(f"zipped {archive}")
    if args.target in ("coreml", "all"):
        print("Core ML: validated on this machine by loading the spec (names, shapes); predictions need macOS")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("export", help="export models to mobile bundles (ONNX fp32 + int8)", formatter_class=formatter)
    p.add_argument("--target", default="onnx", help="onnx | coreml | all (all: OUT/onnx and OUT/coreml)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="encoder checkpoint folder or .safetensors")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--matcher", default=None, help="second-stage folder (text encoder + SLiCK verifier) to include")
    p.add_argument("--recalibrate", action="store_true", help="refit score calibration even if the checkpoint has one")
    p.add_argument("--int8-only", action="store_true",
                   help="keep only the int8 graphs (the shipped bundle; smaller, same accuracy in BENCHMARKS.md)")
    p.add_argument("--zip", action="store_true", help="also write each bundle folder as a .zip next to it")
    p.add_argument("--threshold", type=float, default=None,
                   help="default detection threshold (sensitivity 0.5) stored in the bundle; default: keep/0.5")
    p.add_argument("--calibration-anchors", type=int, default=200, help="anchor phrases for calibration")
    p.add_argument("--lm", default=None, help="export this LM checkpoint instead of the keyword spotter "
                                              "(ONNX with KV-cache state + int8; Core ML)")
    p.add_argument("--k", type=int, default=None, help="LM: active experts baked into the export (default: the model's)")
    p.add_argument("--lm-int8", action="store_true", help="LM: also write model.int8.onnx (dynamic int8 MatMuls)")
    p.set_defaults(func=_export)
