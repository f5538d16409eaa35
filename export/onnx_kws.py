"""Export the streaming KWS encoder to ONNX and write a self-describing bundle.

The exported graph is one chunk step: `audio_chunk` (1, chunk_samples) plus the state pairs
`cached_*` -> `new_cached_*` (as in icefall's streaming export), returning per-frame phoneme
log-probs, frame embeddings and gate probabilities. Feature extraction is inside the graph.

A bundle is a folder with the model files and `manifest.json`: format version, sample rate, chunk
size, feature settings, state names and shapes, thresholds, the sha256 of every file, the heron
version. The runtime reads everything it needs from the manifest; it hard-codes none of it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from heron.models.conformer import GatedConformer
from heron.runtime.bundle import path_size, sha256_path, write_identity

BUNDLE_FORMAT = "heron-kws-bundle/1"
# a bundle exported before calibration (tests, the provisional bundle of the export pipeline): scores
# map to confidences monotonically, but no threshold has been fitted
UNCALIBRATED = {"slope": 3.0, "offset": -5.0, "per_phoneme": 0.0, "threshold": 0.5, "fitted_on": "not calibrated"}


class _ChunkStep(nn.Module):
    """Export-only wrapper: positional tensors in, positional tensors out (skip=False: a pure graph)."""

    def __init__(self, model: GatedConformer, state_names: list[str]):
        super().__init__()
        self.model = model
        self.state_names = state_names

    def forward(self, audio_chunk, *state):
        st = dict(zip(self.state_names, state))
        log_probs, emb, gates, new = self.model.forward_chunk(audio_chunk, st, skip=False)
        return (log_probs, emb, gates, *[new[n] for n in self.state_names])


def export_encoder_onnx(model: GatedConformer, path: str | Path) -> dict:
    """Write the chunk-step ONNX file; returns the manifest fragment describing its inputs/outputs."""
    model = model.eval()
    state = model.init_state(1)
    names = list(state)
    wrapper = _ChunkStep(model, names).eval()
    chunk = torch.zeros(1, model.config.chunk_samples)
    in_names = ["audio_chunk"] + names
    out_names = ["log_probs", "embeddings", "gate_probs"] + [f"new_{n}" for n in names]
    with torch.no_grad():
        torch.onnx.export(wrapper, (chunk, *state.values()), str(path), input_names=in_names,
                          output_names=out_names, dynamo=True, external_data=False, verbose=False)
    return {
        "inputs": {"audio_chunk": [1, model.config.chunk_samples],
                   **{n: list(t.shape) for n, t in state.items()}},
        "outputs": out_names,
        "state_pairs": {n: f"new_{n}" for n in names},
    }


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 weights for the encoder; the front end's DFT and mel matmuls stay fp32
    (8-bit spectra would cost accuracy and save only ~0.6 MB)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src)).graph
    keep_fp32 = [n.name for n in graph.node if any(i.startswith("model.frontend.") for i in n.input)]
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, nodes_to_exclude=keep_fp32)


def write_bundle(model: GatedConformer, out: str | Path, *, calibration: dict, int8: bool = True,
                 extra_files: dict[str, Path] | None = None, model_meta: dict | None = None,
                 verifier=None, target: str = "onnx", modular: bool = True, background=None,
                 int8_only: bool = False, phoneme_table=None) -> Path:
    """Export the encoder (fp32 and optionally int8) and, given `verifier=(text_encoder, matcher)`, the
    second stage; write manifest.json with checksums."""
    from heron import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    calibration = {**UNCALIBRATED, **calibration}
    for stale in ("manifest.json", "manifest.sha256"):  # a half-written bundle never looks complete
        (out / stale).unlink(missing_ok=True)
    if target == "coreml":
        from .coreml_kws import export_encoder_coreml, validate_mlpackage

        meta = {"heron_version": __version__, "chunk_samples": model.config.chunk_samples, "sample_rate": 16000}
        io = export_encoder_coreml(model, out / "encoder.mlpackage", meta)
        validate_mlpackage(out / "encoder.mlpackage", io)
        files = {"encoder": "encoder.mlpackage"}
        if verifier is not None:
            from .coreml_kws import export_matcher_coreml, export_text_encoder_coreml, output_names

            export_text_encoder_coreml(verifier[0], out / "text_encoder.mlpackage")
            export_matcher_coreml(verifier[1], out / "matcher.mlpackage")
            if output_names(out / "matcher.mlpackage") != ["match_prob", "subsequence_probs"]:
                raise ValueError("matcher.mlpackage outputs do not match the ONNX interface")
            files["text_encoder"], files["matcher"] = "text_encoder.mlpackage", "matcher.mlpackage"
    elif target == "onnx":
        io = export_encoder_onnx(model, out / "encoder.onnx")
        files = {"encoder": "encoder.onnx"}
        if int8:
            quantize_int8(out / "encoder.onnx", out / "encoder.int8.onnx")
            files["encoder_int8"] = "encoder.int8.onnx"
        if modular:  # per-module graphs: the runtime skips closed gates for real
            for key, name in export_encoder_modular(model, out / "modular").items():
                files[f"mod.{key}"] = f"modular/{name}"
                if int8:
                    quantize_int8(out / "modular" / name, out / "modular" / name.replace(".onnx", ".int8.onnx"))
                    files[f"mod8.{key}"] = f"modular/{name.replace('.onnx', '.int8.onnx')}"
        if int8_only:  # what ships: int8 graphs only (fp32 comes back with `heron export`)
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
    manifest = {
        "format": BUNDLE_FORMAT,
        "target": target,
        "heron_version": __version__,
        "sample_rate": 16000,
        "chunk_samples": c.chunk_samples,
        "frame_seconds": c.stack * 0.01,
        "frames_per_chunk": c.chunk_frames,
        "features": {"type": "log-mel (in graph)", "n_fft": 400, "hop": 160, "n_mels": fe.n_mels,
                     "f_min": fe.f_min, "f_max": fe.f_max, "window": "hann"},
        "phonemes": {"blank": 0, "classes": "1 + index in heron.runtime.phonemes.PHONEMES"},
        "gates": {"names": ["ffn1", "attn", "conv", "ffn2"], "layers": c.n_layers},
        "encoder": io,
        "calibration": {**calibration, "znorm": background is not None},  # fitted with Z-norm scores or not
        "matcher": {"gap_penalty": 0.1, "frames_base": 10, "frames_per_phoneme": 8},
        **({"verifier": {"max_frames": verifier[1].config.max_frames, "margin_frames": 2,
                         "min_first_stage": calibration.get("min_first_stage", 0.0)}} if verifier is not None else {}),
        "model": model_meta or {},
        "files": {k: {"path": v, "sha256": sha256_path(out / v), "bytes": path_size(out / v)}
                  for k, v in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False))
    write_identity(out)
    return out


def export_text_encoder_onnx(text_enc, path: str | Path) -> None:
    """phoneme ids (1, N) int64 -> text embeddings (1, N, D); N is dynamic (1..max_phonemes)."""
    ids = torch.ones(1, 7, dtype=torch.int64)
    n = torch.export.Dim("n_phonemes", min=1, max=text_enc.config.max_phonemes)
    with torch.no_grad():
        torch.onnx.export(text_enc.eval(), (ids,), str(path), input_names=["phoneme_ids"],
                          output_names=["text_embeddings"], dynamic_shapes={"ids": {1: n}},
                          dynamo=True, external_data=False, verbose=False)


class _MatcherStep(nn.Module):
    def __init__(self, matcher):
        super().__init__()
        self.matcher = matcher

    def forward(self, audio, text):
        # one window and one keyword: every frame and phoneme is real, so the masks are all true
        am = torch.ones(audio.shape[:2], dtype=torch.bool)
        tm = torch.ones(text.shape[:2], dtype=torch.bool)
        utt, sub = self.matcher(audio, am, text, tm)
        return torch.sigmoid(utt), torch.sigmoid(sub)


def export_matcher_onnx(matcher, path: str | Path) -> None:
    """audio window (1, T, Da) + text embeddings (1, N, Dt) -> (match prob (1,), subsequence probs (1, N))."""
    c = matcher.config
    audio = torch.zeros(1, 20, c.d_audio)
    text = torch.zeros(1, 7, c.d_text)
    t = torch.export.Dim("frames", min=2, max=c.max_frames)
    n = torch.export.Dim("n_phonemes", min=1, max=c.max_phonemes)
    with torch.no_grad():
        torch.onnx.export(_MatcherStep(matcher.eval()), (audio, text), str(path),
                          input_names=["audio_window", "text_embeddings"], output_names=["match_prob", "subsequence_probs"],
                          dynamic_shapes={"audio": {1: t}, "text": {1: n}}, dynamo=True, external_data=False,
                          verbose=False)


# --- modular export: one small graph per module, so the runtime can really skip closed gates -------

class _Frontend(nn.Module):
    def __init__(self, model: GatedConformer):
        super().__init__()
        self.model = model

    def forward(self, audio_chunk, cached_audio):
        from heron.models.frontend import CONTEXT

        audio = torch.cat([cached_audio, audio_chunk], dim=1)
        x = self.model.inp(self.model.stack_frames(self.model.frontend(audio)))
        return x, audio[:, audio.shape[1] - CONTEXT:]


class _Gate(nn.Module):
    def __init__(self, blk):
        super().__init__()
        self.blk = blk

    def forward(self, x):
        return torch.sigmoid(self.blk.gate(x.mean(dim=1)))  # (1, 4)


class _Residual(nn.Module):
    def __init__(self, fn, scale: float):
        super().__init__()
        self.fn, self.scale = fn, scale

    def forward(self, x):
        return x + self.scale * self.fn(x)


class _Attn(nn.Module):
    def __init__(self, blk):
        super().__init__()
        self.attn = blk.attn

    def forward(self, x, k_cache, v_cache, key_valid):
        q, k, v = self.attn.project(x)
        C, L = x.shape[1], k_cache.shape[2]
        k_all, v_all = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
        valid = torch.cat([key_valid, torch.ones_like(key_valid[:, :C])], dim=1)
        y = x + self.attn.attend(q, k_all, v_all, valid[:, None, None, :] > 0.5)
        return y, k_all[:, :, C:C + L], v_all[:, :, C:C + L], valid[:, C:C + L]


class _Conv(nn.Module):
    def __init__(self, blk):
        super().__init__()
        self.conv = blk.conv

    def forward(self, x, hist):
        y, new_hist = self.conv.post(self.conv.pre(x), hist)
        return x + y, new_hist


class _Head(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.head = model.head

    def forward(self, x):
        return torch.log_softmax(self.head(x), dim=-1)


def export_encoder_modular(model: GatedConformer, folder: str | Path) -> dict:
    """Write frontend.onnx, layer{i}_{gate,ffn1,attn,conv,ffn2,norm}.onnx and head.onnx; return the
    manifest fragment (file names). The numpy orchestrator (runtime/modular.py) runs them and skips
    the modules whose gate is closed, keeping the caches exactly as the monolithic graph does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    c = model.config
    st = model.init_state(1)
    x = torch.zeros(1, c.chunk_frames, c.d_model)

    def save(mod, args, name, ins, outs):
        with torch.no_grad():
            torch.onnx.export(mod.eval(), args, str(folder / name), input_names=ins, output_names=outs,
                              dynamo=True, external_data=False, verbose=False)
        return name

    files = {"frontend": save(_Frontend(model), (torch.zeros(1, c.chunk_samples), st["cached_audio"]),
                              "frontend.onnx", ["audio_chunk", "cached_audio"], ["x", "new_cached_audio"])}
    for i, blk in enumerate(model.blocks):
        files[f"layer{i}_gate"] = save(_Gate(blk), (x,), f"layer{i}_gate.onnx", ["x"], ["gate_probs"])
        files[f"layer{i}_ffn1"] = save(_Residual(blk.ffn1, 0.5), (x,), f"layer{i}_ffn1.onnx", ["x"], ["y"])
        files[f"layer{i}_attn"] = save(_Attn(blk), (x, st[f"cached_key_{i}"], st[f"cached_value_{i}"],
                                                    st[f"cached_valid_{i}"]), f"layer{i}_attn.onnx",
                                       ["x", "k_cache", "v_cache", "key_valid"], ["y", "new_k", "new_v", "new_valid"])
        files[f"layer{i}_conv"] = save(_Conv(blk), (x, st[f"cached_conv_{i}"]), f"layer{i}_conv.onnx",
                                       ["x", "hist"], ["y", "new_hist"])
        files[f"layer{i}_ffn2"] = save(_Residual(blk.ffn2, 0.5), (x,), f"layer{i}_ffn2.onnx", ["x"], ["y"])
        files[f"layer{i}_norm"] = save(blk.norm, (x,), f"layer{i}_norm.onnx", ["x"], ["y"])
    files["head"] = save(_Head(model), (x,), "head.onnx", ["x"], ["log_probs"])
    return files
