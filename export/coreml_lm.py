"""Core ML export of heron LMs, two forms:

- stateful (iOS 18+, the default in bundles): the KV cache lives in Core ML state (ct.StateType
  k_cache / v_cache, (n_layers, 1, G, max_len, S)); inputs are the token block and its start position,
  the output the block's logits. Rolling back rejected draft tokens is just passing a smaller position
  next time (positions beyond it are overwritten before they are read).
- explicit state (iOS 17): the same step graph as the ONNX export, tokens + cached_key_i/value_i in,
  logits + new_cached_* out, flexible block and cache length (RangeDim).

On Linux a package is validated by its spec (names, shapes, states); predictions need macOS. The traced
stateful step is checked against plain decoding in torch (tests/test_lm_export.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from heron.export.coreml import convert_named
from heron.export.onnx_lm import LMStep, empty_state, state_names
from heron.export.quiet import quietly
from heron.runtime.bundle import write_manifest
from heron.runtime.manifest import LMCoreMLManifest, file_table
from heron.models.lm.model import Routing, Transformer


class StatefulStep(nn.Module):
    """tokens (1, T) + start position (1,) int32 -> logits (1, T, V); the cache is this module's buffers,
    written in place (what Core ML's stateful conversion turns into ct.StateType)."""

    def __init__(self, model: Transformer, k: int | None, max_len: int):
        super().__init__()
        self.model, self.route = model, Routing(k=k, moe_impl="gather")
        cfg = model.cfg
        shape = (cfg.n_layers, 1, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape))
        self.register_buffer("v_cache", torch.zeros(shape))

    def update(self, layer: int, k, v):
        pos0, T = self.length, k.shape[2]
        self.k_cache[layer, :, :, pos0:pos0 + T] = k
        self.v_cache[layer, :, :, pos0:pos0 + T] = v
        return self.k_cache[layer, :, :, :pos0 + T], self.v_cache[layer, :, :, :pos0 + T]

    def forward(self, tokens, position):
        self.length = position[0]  # read by the model as the block's start (the cache protocol)
        return self.model(tokens, self, self.route).logits


def trace_stateful(model: Transformer, k: int | None = None, max_len: int | None = None):
    step = StatefulStep(model.eval(), k, max_len or model.cfg.max_seq_len).eval()
    example = (torch.zeros(1, 3, dtype=torch.long), torch.tensor([2], dtype=torch.int32))
    with torch.no_grad():
        traced = torch.jit.trace(step, example, check_trace=False)
    return step, traced


def export_coreml_stateful(model: Transformer, path: str | Path, k: int | None = None,
                           max_len: int | None = None) -> dict:
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError("Core ML export needs coremltools: pip install 'heron[export]'") from e
    cfg = model.cfg
    max_len = max_len or cfg.max_seq_len
    step, traced = trace_stateful(model, k, max_len)
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="tokens", shape=(1, ct.RangeDim(1, max_len, default=3)), dtype=np.int32),
                ct.TensorType(name="position", shape=(1,), dtype=np.int32)],
        outputs=[ct.TensorType(name="logits")],
        states=[ct.StateType(wrapped_type=ct.TensorType(shape=step.k_cache.shape), name="k_cache"),
                ct.StateType(wrapped_type=ct.TensorType(shape=step.v_cache.shape), name="v_cache")],
        minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram", compute_units=ct.ComputeUnit.ALL)
    mlmodel.short_description = "heron LM decoding step with a stateful KV cache: tokens + position -> logits"
    mlmodel.save(str(path))
    return {"inputs": ["tokens", "position"], "outputs": ["logits"], "states": ["k_cache", "v_cache"],
            "cache_shape": list(step.k_cache.shape)}


def export_coreml(model: Transformer, path: str | Path, k: int | None = None) -> dict:
    """The explicit-state form (iOS 17)."""
    try:
        import coremltools as ct
    except ImportError as e:
        raise ImportError("Core ML export needs coremltools: pip install 'heron[export]'") from e
    model = model.eval()
    cfg = model.cfg
    step = LMStep(model, k).eval()
    ins, outs = state_names(cfg.n_layers)
    state = empty_state(model, 4)
    T = torch.export.Dim("T", min=1, max=cfg.max_seq_len)
    P = torch.export.Dim("P", min=1, max=cfg.max_seq_len)
    example = (torch.zeros(1, 3, dtype=torch.long), *state)
    program = torch.export.export(step, example, dynamic_shapes=({1: T}, tuple({2: P} for _ in state)))
    program = program.run_decompositions({})
    shape_state = (1, cfg.n_kv_heads, ct.RangeDim(1, cfg.max_seq_len, default=4), cfg.head_dim)
    inputs = [ct.TensorType(name="tokens", shape=(1, ct.RangeDim(1, cfg.max_seq_len, default=3)), dtype=np.int32)]
    inputs += [ct.TensorType(name=n, shape=shape_state) for n in ins]
    convert_named(program, inputs, ["logits", *outs], path,
                   "heron LM decoding step: tokens + KV cache -> logits + new KV cache")
    return {"inputs": ["tokens", *ins], "outputs": ["logits", *outs]}


@quietly
def export_coreml_bundle(checkpoint_dir: str | Path, out: str | Path, k: int | None = None) -> Path:
    import coremltools as ct

    from heron.models.lm import checkpoint
    model, tok, meta = checkpoint.load(checkpoint_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "manifest.sha256"):  # a half-written bundle never looks complete
        (out / stale).unlink(missing_ok=True)
    names = export_coreml_stateful(model, out / "model.mlpackage", k)
    spec = ct.utils.load_spec(str(out / "model.mlpackage"))
    got = ([i.name for i in spec.description.input], [o.name for o in spec.description.output],
           [s.name for s in spec.description.state])
    if got != (names["inputs"], names["outputs"], names["states"]):
        raise ValueError(f"Core ML package interface {got} differs from {names}")
    shutil.copy(Path(checkpoint_dir) / checkpoint.TOKENIZER, out / "tokenizer.json")
    cfg = model.cfg
    manifest = LMCoreMLManifest(
        n_layers=cfg.n_layers, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, vocab_size=cfg.vocab_size,
        max_seq_len=cfg.max_seq_len, inputs=tuple(names["inputs"]), outputs=tuple(names["outputs"]),
        states=tuple(names["states"]),
        files=file_table(out, {"model": "model.mlpackage", "tokenizer": "tokenizer.json"}),
        active_experts=model.resolve_k(k) if cfg.n_experts else None, eot_id=tok.eot_id,
        source={"checkpoint": str(checkpoint_dir), "meta": meta})
    write_manifest(out, manifest)
    return out
