"""`heron kws export`: torch checkpoint -> self-describing mobile bundles (needs `pip install heron[export]`)."""
from __future__ import annotations

import json
from pathlib import Path

from heron.paths import default_kws_checkpoint


def _export_lm(args) -> int:
    try:
        from heron.export.onnx_lm import export_bundle
    except ImportError as e:
        raise ImportError(f"export needs torch and onnx: pip install 'heron[export]' ({e})") from e
    if args.target not in ("onnx", "coreml", "all"):
        raise ValueError(f"unknown target {args.target!r}; use onnx, coreml or all")
    from heron.paths import NAMED_LMS, named_lm_path
    gguf = named_lm_path(args.lm) if args.lm in NAMED_LMS else Path(args.lm)
    if gguf.suffix.lower() == ".gguf" or args.lm in NAMED_LMS:  # the file's own quantized blocks
        if args.target != "onnx" or args.k is not None or args.lm_int8:  # (--compute applies to GGUF only)
            raise ValueError("a GGUF file exports to ONNX only, as its own blocks (model.int4.onnx): "
                             "--target coreml/all, --k and --int8 do not apply")
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        from heron.export.gguf_onnx import export_gguf_bundle
        out = export_gguf_bundle(gguf, check_out_folder(args.out, "lm"), compute=args.compute)
        for f in sorted(out.iterdir()):
            print(f"{f}  {f.stat().st_size / 1e6:.2f} MB")
        return 0
    base = check_out_folder(args.out, "lm")
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


def check_out_folder(path: str | Path, kind: str) -> Path:
    """--out must be a new folder, an empty one, or a heron bundle folder of the same `kind` ("kws" or
    "lm") being replaced: an export never writes over a file, into a folder of other things, or over
    another kind of bundle."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        ours = {"manifest.json", "manifest.sha256"} & entries or {"onnx", "coreml"} >= entries
        if entries and not ours:
            raise ValueError(f"--out {out} is a folder that holds other things and no heron bundle; "
                             "give a new or empty folder")
        for folder in (out, out / "onnx", out / "coreml"):
            manifest = folder / "manifest.json"
            if manifest.is_file():
                try:
                    fmt = json.loads(manifest.read_text()[:1_000_000]).get("format", "")
                except (ValueError, AttributeError, UnicodeDecodeError):
                    fmt = ""
                if not (isinstance(fmt, str) and fmt.startswith(f"heron-{kind}")):
                    raise ValueError(f"--out {out} holds another kind of bundle ({fmt or 'unknown format'}); "
                                     f"a {kind.upper()} export replaces only a {kind.upper()} bundle")
    return out


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
        folder = write_mobile_bundle(args.model, out)
        _print_bundle(folder)
        total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        print(f"mobile bundle: {total / 1e6:.2f} MB in {folder}; keyword files: heron kws enroll TEXT --out F.kw"
              + (f" --model {args.model}" if args.model else ""))
        return 0
    if args.model is not None:
        raise ValueError("--model names the source bundle of --mobile; a full export reads --checkpoint")
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


def add_lm_export(sub, formatter) -> None:
    """`heron lm export CHECKPOINT --out DIR`: a language model -> ONNX / Core ML bundles."""
    p = sub.add_parser("export", help="export an LM checkpoint (ONNX with KV-cache state pairs; Core ML)",
                       formatter_class=formatter)
    p.add_argument("lm", metavar="CHECKPOINT", help="heron LM checkpoint folder, a Llama GGUF file or a named model "
                                                  "(smollm2): a GGUF exports its own quantized blocks (model.int4.onnx)")
    p.add_argument("--out", required=True, help="bundle folder")
    p.add_argument("--target", default="onnx", help="onnx | coreml | all (all: OUT/onnx and OUT/coreml)")
    p.add_argument("--k", type=int, default=None, help="active experts baked into the export (default: the model's)")
    p.add_argument("--lm-int8", "--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 MatMuls)")
    p.add_argument("--compute", default="int8x2", choices=["int8x2", "int8", "fp32"],
                   help="GGUF export: how the quantized MatMuls compute: int8x2 = int8 activations plus their int8 "
                        "remainder (fp32's answers, fast), int8 = as llama.cpp (fastest; 7 of 8 answers kept in the benchmark), "
                        "fp32 (exact, slow)")
    p.set_defaults(func=_export_lm)
