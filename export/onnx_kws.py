"""Export the streaming KWS encoder (single graph and per-module graphs) and the second stage to ONNX.

The exported graph is one chunk step: `audio_chunk` (1, chunk_samples) plus the state pairs
`cached_*` -> `new_cached_*` (as in icefall's streaming export), returning per-frame phoneme
log-probs, frame embeddings and gate probabilities. Feature extraction is inside the graph.

A bundle is a folder with the model files and `manifest.json`: format version, sample rate, chunk
size, feature settings, state names and shapes, thresholds, the sha256 of every file, the heron
version. The runtime reads everything it needs from the manifest; it hard-codes none of it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from heron.export.wrappers import ChunkStep, MatcherStep
from heron.models.conformer import GatedConformer

def export_encoder_onnx(model: GatedConformer, path: str | Path) -> dict:
    """Write the chunk-step ONNX file; returns the manifest fragment describing its inputs/outputs."""
    model = model.eval()
    state = model.init_state(1)
    names = list(state)
    wrapper = ChunkStep(model, names).eval()
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


def export_text_encoder_onnx(text_enc, path: str | Path) -> None:
    """phoneme ids (1, N) int64 -> text embeddings (1, N, D); N is dynamic (1..max_phonemes)."""
    ids = torch.ones(1, 7, dtype=torch.int64)
    n = torch.export.Dim("n_phonemes", min=1, max=text_enc.config.max_phonemes)
    with torch.no_grad():
        torch.onnx.export(text_enc.eval(), (ids,), str(path), input_names=["phoneme_ids"],
                          output_names=["text_embeddings"], dynamic_shapes={"ids": {1: n}},
                          dynamo=True, external_data=False, verbose=False)


def export_matcher_onnx(matcher, path: str | Path) -> None:
    """audio window (1, T, Da) + text embeddings (1, N, Dt) -> (match prob (1,), subsequence probs (1, N))."""
    c = matcher.config
    audio = torch.zeros(1, 20, c.d_audio)
    text = torch.zeros(1, 7, c.d_text)
    t = torch.export.Dim("frames", min=2, max=c.max_frames)
    n = torch.export.Dim("n_phonemes", min=1, max=c.max_phonemes)
    with torch.no_grad():
        torch.onnx.export(MatcherStep(matcher.eval()).eval(), (audio, text), str(path),
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


def export_speech_gate_onnx(gate, config, path: str | Path) -> str:
    """The speech gate (heron.models.speech_gate) as one small fp32 graph: x (1, C, d) -> speech_prob (1,)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(gate.eval(), (torch.zeros(1, config.chunk_frames, config.d_model),), str(path),
                          input_names=["x"], output_names=["speech_prob"], dynamo=True, external_data=False,
                          verbose=False)
    return path.name
