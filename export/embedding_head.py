"""The embedding head (heron.models.embedding_head) into a keyword-spotting bundle.

`add_embedding_head(bundle, head, out)` copies a finished bundle to `out` with three more graphs under
`acoustic/`: Google's speech_embedding (melspectrogram.onnx + embedding_model.onnx, Apache-2.0, as the
openwakeword 0.4.0 wheel ships them) and the head (embedding_head.onnx: (1, T, 96) -> (1, 2T, classes)
log-probabilities), and the manifest's `embedding_head` section that tells the runtime how to use them
(heron.runtime.manifest.HeadCheck). Nothing else in the bundle changes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from heron.runtime.manifest import HeadCheck
from heron.runtime.speech_embedding import DIM, EMBEDDING_FILE, MEL_FILE, openwakeword_models_dir

HEAD_FILE = "embedding_head.onnx"
FOLDER = "acoustic"
FILE_KEYS = {"speech_embedding_mel": MEL_FILE, "speech_embedding": EMBEDDING_FILE, "embedding_head": HEAD_FILE,
             "embedding_notice": "NOTICE"}  # the two graphs' licence travels with them
LICENSE_NOTE = ("melspectrogram.onnx and embedding_model.onnx: Google's speech_embedding (TF-Hub speech_embedding/1, "
                "Apache-2.0), as converted by openWakeWord 0.4.0 (Apache-2.0).")


def _manifest(bundle: Path):
    """A bundle's checked manifest (heron.runtime.manifest.KwsManifest)."""
    from heron.runtime.bundle import read_manifest
    from heron.runtime.manifest import KwsManifest

    raw, _ = read_manifest(bundle, "keyword-spotting")
    return KwsManifest.from_dict(raw, str(bundle / "manifest.json"))


def export_head_onnx(model, path: str | Path) -> Path:
    """The head as ONNX, T dynamic; checked against torch on a random input."""
    import onnxruntime as ort
    import torch

    from heron.export.quiet import quiet_exporters

    model = model.eval()
    x = torch.randn(1, 12, DIM) * model.std + model.mean
    with quiet_exporters():
        torch.onnx.export(model, (x,), str(path), input_names=["embeddings"], output_names=["log_probs"],
                          dynamic_axes={"embeddings": {1: "T"}, "log_probs": {1: "T2"}}, opset_version=17,
                          dynamo=False)
    x2 = torch.randn(1, 31, DIM) * model.std + model.mean
    with torch.no_grad():
        want = model(x2).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"embeddings": x2.numpy()})[0]
    if not np.allclose(got, want, atol=1e-3):
        raise RuntimeError(f"{path}: the ONNX head differs from torch by {np.abs(got - want).max():.3g}")
    return Path(path)


def add_embedding_head(bundle: str | Path, head: str | Path, out: str | Path, check: HeadCheck,
                       speech_embedding_dir: str | Path | None = None) -> Path:
    """A copy of `bundle` at `out` with the head and its features; -> out."""
    from heron.models.embedding_head import load_head
    from heron.runtime.bundle import write_manifest
    from heron.runtime.manifest import FileEntry, KwsManifest

    bundle, out = Path(bundle), Path(out)
    m = _manifest(bundle)
    if m.target != "onnx" or m.mobile is not None:
        raise ValueError(f"{bundle}: the embedding head goes into a full ONNX bundle (this one is "
                         f"{'mobile' if m.mobile else m.target})")
    model, meta = load_head(head)
    if model.cfg.n_classes != len(m.classes):
        raise ValueError(f"{head}: the head has {model.cfg.n_classes} classes, the bundle {len(m.classes)}")
    if out.resolve() != bundle.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(bundle, out)
    (out / FOLDER).mkdir(exist_ok=True)
    src = Path(speech_embedding_dir) if speech_embedding_dir else openwakeword_models_dir()
    for f in (MEL_FILE, EMBEDDING_FILE):
        shutil.copyfile(src / f, out / FOLDER / f)
    export_head_onnx(model, out / FOLDER / HEAD_FILE)
    (out / FOLDER / "NOTICE").write_text(LICENSE_NOTE + "\n")
    files = {**m.files, **{key: FileEntry.of(out, f"{FOLDER}/{name}") for key, name in FILE_KEYS.items()}}
    model_meta = {**m.model, "embedding_head": {"epochs": meta.get("epochs_done"), "train": meta.get("train"),
                                                "config": meta.get("config")}}
    new = replace(m, files=files, embedding_head=check, model=json.loads(json.dumps(model_meta)))
    KwsManifest.from_dict(new.to_dict(), str(out / "manifest.json"))  # what the runtime will read back
    write_manifest(out, new)
    return out


def without_embedding_head(bundle: str | Path, out: str | Path) -> Path:
    """A copy of `bundle` at `out` without its embedding head: the first stage alone (what mobile bundles and
    the JavaScript runtime run); -> out."""
    from heron.runtime.bundle import write_manifest

    bundle, out = Path(bundle), Path(out)
    m = _manifest(bundle)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out)
    shutil.rmtree(out / FOLDER, ignore_errors=True)
    files = {k: v for k, v in m.files.items() if k not in FILE_KEYS}
    write_manifest(out, replace(m, files=files, embedding_head=None))
    return out


def refit_offset(bundle: str | Path, negative_files: list[str], fa_per_hour: float = 0.5, steps: int = 12) -> dict:
    """Choose the head's `offset` so that the bundle's default threshold keeps meaning what it meant for
    the first stage alone: at most fa_per_hour false accepts per keyword-hour on real non-keyword audio
    (30 other phrases, heron.models.calibrate_kws.real_negative_threshold), the threshold unchanged. The
    offset shifts every frame's log score by the same amount (candidates and the floor alike), so it moves
    no keyword's ranking of its frames: only where the default threshold falls. Bisection; the manifest
    is rewritten (a new identity). -> {"offset", "threshold", "report"}."""
    from heron.models.calibrate_kws import real_negative_threshold
    from heron.runtime.bundle import write_manifest
    from heron.runtime.spotter import KeywordSpotter

    bundle = Path(bundle)
    sp = KeywordSpotter.load(bundle)
    target = float(sp.calibration["threshold"])
    lo, hi = HeadCheck.RANGES["offset"]  # a lower offset raises every score
    report = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        sp.head = replace(sp.head, offset=mid)
        report = real_negative_threshold(sp, negative_files, fa_per_hour)
        if report["threshold"] > target:  # negatives score too high: lower them
            lo = mid
        else:
            hi = mid
    offset = round((lo + hi) / 2, 2)
    m = _manifest(bundle)
    write_manifest(bundle, replace(m, embedding_head=replace(m.embedding_head, offset=offset)))
    return {"offset": offset, "threshold": target, "report": report}
