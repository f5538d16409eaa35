"""Build keyword-spotting bundles from a trained checkpoint: the whole `heron kws export` pipeline.

    build_kws_bundles("models/weights/kws-base", "out/kws", target="all")

Writes only under `out` (a provisional bundle for the background bank and calibration goes to a
hidden folder there and is removed); the checkpoint folder is read, never written. With the
checkpoint's own calibration.json (what ships), the result carries the shipped calibration.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from heron.export.onnx_kws import (export_encoder_modular, export_encoder_onnx, export_matcher_onnx, export_speech_gate_onnx,
                                   export_text_encoder_onnx)
from heron.export.quantize import quantize_int8
from heron.export.quiet import quietly
from heron.models.audio import HOP, N_FFT, SAMPLE_RATE
from heron.models.conformer import BLANK, N_PHONEME_CLASSES, GatedConformer
from heron.runtime.bundle import write_manifest
from heron.runtime.ctc_kws import MatcherOptions
from heron.runtime.manifest import (BLANK_SYMBOL, Calibration, EncoderIO, Features, KwsManifest, Verifier,
                                    file_table)
from heron.runtime.phonemes import PHONEMES

TARGETS = ("onnx", "coreml", "all")
_WORK = ".heron-export-work"
FRONTEND_FP32 = ("model.frontend.",)  # the front end's DFT and mel matmuls stay fp32 in int8 graphs
# Only matmuls become int8: onnxruntime's ConvInteger for the conformer's depthwise convolution costs more
# than the fp32 Conv it replaces (x86 AVX2, 1 thread: 110 vs 66 us per convolution module and chunk,
# scripts/bench_kws_graphs.py) and its weights are a few kB.
INT8_OPS = ("MatMul",)


def _calibration_file(checkpoint: Path, matcher: Path | None) -> Path:
    return (matcher if matcher is not None else checkpoint) / "calibration.json"


@quietly
def build_kws_bundles(checkpoint: str | Path, out: str | Path, target: str = "onnx", matcher: str | Path | None = None,
                      recalibrate: bool = False, threshold: float | None = None, int8_only: bool = False,
                      calibration_anchors: int = 200, background_data: list[str] | None = None,
                      speech_gate: str | Path | None = None, no_speech_gate: bool = False,
                      matcher_options: MatcherOptions | None = None) -> list[Path]:
    """Checkpoint -> bundle folders (OUT for one target; OUT/onnx and OUT/coreml for "all").

    Steps: load the encoder (and the second stage, given `matcher`); encode the background bank with
    a provisional fp32 bundle (TTS speech, or real recordings from `background_data`); fit the calibration on it unless the checkpoint has one (or
    `recalibrate`); add the speech gate (`speech_gate` folder, else the checkpoint's own
    speech_gate.safetensors, unless `no_speech_gate`) to ONNX bundles; write the final bundle(s) once.
    `matcher_options`: the first-stage matcher's settings (default: those the checkpoint's calibration.json
    was fitted with, its "matcher" entry, else MatcherOptions()); others move every score, so they need a
    refitted calibration (`recalibrate`).
    Returns the bundle folders written.
    """
    from heron.models.calibrate_kws import build_background, fit_calibration
    from heron.models.train_kws import load_encoder
    from heron.runtime.spotter import KeywordSpotter

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {threshold}")
    if calibration_anchors < 10:
        raise ValueError(f"--calibration-anchors must be >= 10, got {calibration_anchors}")
    checkpoint, out = Path(checkpoint), Path(out)
    matcher = Path(matcher) if matcher is not None else None
    model, meta = load_encoder(checkpoint)
    verifier = None
    if matcher is not None:
        from heron.models.train_matcher import load_matcher

        te, mt, _, _, _ = load_matcher(matcher)
        verifier = (te, mt)
    gate = None
    gate_dir = Path(speech_gate) if speech_gate is not None else checkpoint
    if speech_gate is not None and no_speech_gate:
        raise ValueError("--speech-gate and --no-speech-gate contradict each other")
    if not no_speech_gate and (speech_gate is not None or (checkpoint / "speech_gate.safetensors").is_file()):
        from heron.models.speech_gate import load_gate
        from heron.runtime.speech_gate import GatePolicy

        module, gate_meta = load_gate(gate_dir)
        if module.d_model != model.config.d_model:
            raise ValueError(f"the speech gate in {gate_dir} was trained for another encoder width")
        policy = gate_meta.get("policy")
        if not isinstance(policy, dict):
            raise ValueError(f"the speech gate in {gate_dir} records no policy (train it with heron kws train-gate)")
        policy = GatePolicy.from_dict(policy, str(gate_dir))  # checked before any export work
        gate = (module, policy)
    cal_path = _calibration_file(checkpoint, matcher)
    calibration = None
    opts = matcher_options or MatcherOptions()
    if cal_path.is_file() and not recalibrate and not background_data:  # a new bank moves the Z-norm: refit
        calibration = json.loads(cal_path.read_text())
        # the matcher options the calibration was fitted with travel with it (absent: the defaults)
        fitted = MatcherOptions.from_dict({**MatcherOptions().to_dict(), **calibration.pop("matcher", {})},
                                          str(cal_path))  # fields it leaves out: the defaults
        if matcher_options is not None and matcher_options != fitted:
            raise ValueError(f"{cal_path} was fitted with the matcher options {fitted.to_dict()}; other options "
                             "need --recalibrate")
        opts = fitted
        _check_fire_range({**calibration, **({} if threshold is None else {"threshold": threshold})})  # before the work
    table_path = checkpoint / "phoneme_table.npy"  # from `heron kws train-matcher` (CTC forced alignment)
    table = None
    if table_path.is_file():
        import numpy as np

        table = np.load(table_path, allow_pickle=False)
    card = {k: meta.get(k) for k in ("step", "format")}
    out.mkdir(parents=True, exist_ok=True)
    work = out / _WORK
    try:
        # the background bank: generic speech encoded by this encoder (fp32, single graph)
        write_bundle(model, work, calibration=calibration or {}, model_meta=card, verifier=verifier,
                     modular=False, int8=False, matcher_options=opts)
        background = build_background(KeywordSpotter.load(work), real=background_data)
        if calibration is None:  # fit on held-out voices, with the Z-norm the bank defines
            write_bundle(model, work, calibration={}, model_meta=card, verifier=verifier, background=background,
                         modular=False, int8=False, matcher_options=opts)
            calibration = fit_calibration(KeywordSpotter.load(work), n_anchors=calibration_anchors)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if threshold is not None:
        calibration = {**calibration, "threshold": threshold}
    _check_fire_range(calibration)  # a fitted calibration: still before the bundles are written
    written = []
    if target in ("onnx", "all"):
        onnx_out = out / "onnx" if target == "all" else out
        written.append(write_bundle(model, onnx_out, calibration=calibration, model_meta=card, verifier=verifier,
                                    background=background, int8_only=int8_only, phoneme_table=table,
                                    speech_gate=gate, matcher_options=opts))
    if target in ("coreml", "all"):
        cm = out / "coreml" if target == "all" else out
        written.append(write_bundle(model, cm, calibration=calibration, model_meta=card, target="coreml",
                                    background=background, verifier=verifier, phoneme_table=table,
                                    matcher_options=opts))
    if target in ("onnx", "all"):
        from heron.runtime.bundle import IDENTITY, load_bundle
        # what was written loads (every field, every file's hash), or export fails; its own identity is the
        # expected one (replacing the shipped bundle is the build script's job: it re-pins it next)
        load_bundle(written[0], sha256=(written[0] / IDENTITY).read_text().strip())
    return written


def _check_fire_range(calibration: dict) -> None:
    """The runtime refuses a bundle whose calibration never fires or fires on background speech: say so
    before exporting one."""
    from heron.runtime.manifest import fire_range_problem

    keys = ("slope", "offset", "per_phoneme", "threshold")
    if all(isinstance(calibration.get(k), (int, float)) for k in keys):
        problem = fire_range_problem(*(float(calibration[k]) for k in keys))
        if problem:
            raise ValueError(f"this calibration would make a bundle the runtime refuses: {problem}")


# a bundle exported before calibration (tests, the provisional bundle of the export pipeline): scores
# map to confidences monotonically, but no threshold has been fitted
UNCALIBRATED = {"slope": 3.0, "offset": -5.0, "per_phoneme": 0.0, "threshold": 0.5, "fitted_on": "not calibrated"}


def write_bundle(model: GatedConformer, out: str | Path, *, calibration: dict, int8: bool = True,
                 extra_files: dict[str, Path] | None = None, model_meta: dict | None = None,
                 verifier=None, target: str = "onnx", modular: bool = True, background=None,
                 int8_only: bool = False, phoneme_table=None, speech_gate=None,
                 matcher_options: MatcherOptions = MatcherOptions()) -> Path:
    """Export the encoder (fp32 and optionally int8) and, given `verifier=(text_encoder, matcher)`, the
    second stage, given `speech_gate=(gate, GatePolicy)` the speech gate (ONNX per-module bundles: it
    skips those graphs); write manifest.json with checksums."""
    from heron.runtime import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = {**UNCALIBRATED, **({"verifier": 0.0} if verifier is not None else {}), **calibration}
    for stale in ("manifest.json", "manifest.sha256"):  # a half-written bundle never looks complete
        (out / stale).unlink(missing_ok=True)
    if target == "coreml":
        from heron.export.coreml import output_names
        from heron.export.coreml_kws import (export_encoder_coreml, export_matcher_coreml,
                                             export_text_encoder_coreml, validate_mlpackage)


        meta = {"heron_version": __version__, "chunk_samples": model.config.chunk_samples, "sample_rate": SAMPLE_RATE}
        io = export_encoder_coreml(model, out / "encoder.mlpackage", meta)
        validate_mlpackage(out / "encoder.mlpackage", io)
        files = {"encoder": "encoder.mlpackage"}
        if verifier is not None:
            export_text_encoder_coreml(verifier[0], out / "text_encoder.mlpackage")
            export_matcher_coreml(verifier[1], out / "matcher.mlpackage")
            if output_names(out / "matcher.mlpackage") != ["match_prob", "subsequence_probs"]:
                raise ValueError("matcher.mlpackage outputs do not match the ONNX interface")
            files["text_encoder"], files["matcher"] = "text_encoder.mlpackage", "matcher.mlpackage"
    elif target == "onnx":
        io = export_encoder_onnx(model, out / "encoder.onnx")
        files = {"encoder": "encoder.onnx"}
        if int8:
            quantize_int8(out / "encoder.onnx", out / "encoder.int8.onnx", keep_fp32_inputs=FRONTEND_FP32,
                          op_types=INT8_OPS)
            files["encoder_int8"] = "encoder.int8.onnx"
        if modular:  # per-module graphs: the runtime skips closed gates for real
            for key, name in export_encoder_modular(model, out / "modular").items():
                files[f"mod.{key}"] = f"modular/{name}"
                if int8:
                    quantize_int8(out / "modular" / name, out / "modular" / name.replace(".onnx", ".int8.onnx"),
                                  keep_fp32_inputs=FRONTEND_FP32, op_types=INT8_OPS)
                    files[f"mod8.{key}"] = f"modular/{name.replace('.onnx', '.int8.onnx')}"
        if speech_gate is not None:
            if not modular:
                raise ValueError("a speech gate needs the per-module graphs it skips (modular=True)")
            files["speech_gate"] = "modular/" + export_speech_gate_onnx(speech_gate[0], model.config,
                                                                        out / "modular" / "speech_gate.onnx")
        if int8_only:  # what ships: int8 graphs only (fp32 comes back with `heron kws export`)
            for key in [k for k in files if k == "encoder" or k.startswith("mod.")]:
                (out / files.pop(key)).unlink()
    else:
        raise ValueError(f"unknown target {target!r}; use onnx or coreml")
    if verifier is not None and target == "onnx":
        text_enc, matcher = verifier
        export_text_encoder_onnx(text_enc, out / "text_encoder.onnx")
        export_matcher_onnx(matcher, out / "matcher.onnx")
        files["text_encoder"], files["matcher"] = "text_encoder.onnx", "matcher.onnx"
    if phoneme_table is not None:  # representative phoneme vectors (39, D): DSP word timestamps
        import numpy as np

        np.save(out / "phoneme_table.npy", np.asarray(phoneme_table, np.float32), allow_pickle=False)
        files["phoneme_table"] = "phoneme_table.npy"
    if background is not None:  # Z-norm bank: float16 log-probs, loaded with allow_pickle=False
        import numpy as np

        np.save(out / "background.npy", np.asarray(background, np.float16), allow_pickle=False)
        files["background"] = "background.npy"
    for key, src in (extra_files or {}).items():
        dst = out / Path(src).name
        if Path(src).resolve() != dst.resolve():
            dst.write_bytes(Path(src).read_bytes())
        files[key] = dst.name
    c = model.config
    fe = model.frontend.config
    where = str(out / "manifest.json")
    manifest = KwsManifest(
        target=target, heron_version=__version__, sample_rate=SAMPLE_RATE, chunk_samples=c.chunk_samples,
        frame_seconds=c.stack * HOP / SAMPLE_RATE, frames_per_chunk=c.chunk_frames,
        features=Features(n_fft=N_FFT, hop=HOP, n_mels=fe.n_mels, f_min=fe.f_min, f_max=fe.f_max),
        # the CTC classes by index: what the encoder's log_probs columns mean (G2P emits these symbols)
        classes=tuple(BLANK_SYMBOL if i == BLANK else PHONEMES[i - 1] for i in range(N_PHONEME_CLASSES)),
        blank=BLANK, layers=c.n_layers,
        encoder=EncoderIO({n: tuple(s) for n, s in io["inputs"].items()}, tuple(io["outputs"]), dict(io["state_pairs"])),
        # fitted with Z-normed scores or raw ones
        calibration=Calibration.from_dict({**calibration, "znorm": background is not None}, where),
        matcher=matcher_options, files=file_table(out, files), model=model_meta or {},
        speech_gate=speech_gate[1] if "speech_gate" in files else None,
        verifier=Verifier(verifier[1].config.max_frames, 2, calibration.get("min_first_stage", 0.0))
        if verifier is not None else None)
    write_manifest(out, manifest)
    return out
