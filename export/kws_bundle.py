"""Build keyword-spotting bundles from a trained checkpoint: the whole `heron export` pipeline.

    build_kws_bundles("models/weights/kws-base", "out/kws", target="all")

Writes only under `out` (a provisional bundle for the background bank and calibration goes to a
hidden folder there and is removed); the checkpoint folder is read, never written. With the
checkpoint's own calibration.json (what ships), the result carries the shipped calibration.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

TARGETS = ("onnx", "coreml", "all")
_WORK = ".heron-export-work"


def _calibration_file(checkpoint: Path, matcher: Path | None) -> Path:
    return (matcher if matcher is not None else checkpoint) / "calibration.json"


def build_kws_bundles(checkpoint: str | Path, out: str | Path, target: str = "onnx", matcher: str | Path | None = None,
                      recalibrate: bool = False, threshold: float | None = None, int8_only: bool = False,
                      calibration_anchors: int = 200) -> list[Path]:
    """Checkpoint -> bundle folders (OUT for one target; OUT/onnx and OUT/coreml for "all").

    Steps: load the encoder (and the second stage, given `matcher`); encode the background bank with
    a provisional fp32 bundle; fit the calibration on it unless the checkpoint has one (or
    `recalibrate`); write the final bundle(s) once. Returns the bundle folders written.
    """
    from heron.export.onnx_kws import write_bundle
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
    cal_path = _calibration_file(checkpoint, matcher)
    calibration = None
    if cal_path.is_file() and not recalibrate:
        calibration = json.loads(cal_path.read_text())
    table_path = checkpoint / "phoneme_table.npy"  # from `heron train matcher` (CTC forced alignment)
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
                     modular=False, int8=False)
        background = build_background(KeywordSpotter.load(work))
        if calibration is None:  # fit on held-out voices, with the Z-norm the bank defines
            write_bundle(model, work, calibration={}, model_meta=card, verifier=verifier, background=background,
                         modular=False, int8=False)
            calibration = fit_calibration(KeywordSpotter.load(work), n_anchors=calibration_anchors)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if threshold is not None:
        calibration = {**calibration, "threshold": threshold}
    written = []
    if target in ("onnx", "all"):
        onnx_out = out / "onnx" if target == "all" else out
        written.append(write_bundle(model, onnx_out, calibration=calibration, model_meta=card, verifier=verifier,
                                    background=background, int8_only=int8_only, phoneme_table=table))
    if target in ("coreml", "all"):
        cm = out / "coreml" if target == "all" else out
        written.append(write_bundle(model, cm, calibration=calibration, model_meta=card, target="coreml",
                                    background=background, verifier=verifier, phoneme_table=table))
    return written
