"""Core ML export of heron LMs: the same one-step graph as the ONNX export (tokens + explicit KV-cache
inputs -> logits + new cache), flexible block length T and cache length P (RangeDim).

Explicit cache tensors, not Core ML's stateful KV cache (ct.StateType): the stateful form needs the
cache as in-place-updated module buffers under torch.jit tracing, which this export path (torch.export)
does not produce; see BENCHMARKS.md / the closing note. On Linux the package is validated by its spec
(names, shapes); predictions need macOS.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from heron.export.coreml_kws import _convert_named
from heron.export.onnx_lm import LMStep, empty_state, state_names
from heron.models.lm.model import Transformer


def export_coreml(model: Transformer, path: str | Path, k: int | None = None) -> dict:
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
    for blk in model.layers:
        if hasattr(blk.ffn, "impl"):
            blk.ffn.impl = "auto"
    shape_state = (1, cfg.n_kv_heads, ct.RangeDim(1, cfg.max_seq_len, default=4), cfg.head_dim)
    inputs = [ct.TensorType(name="tokens", shape=(1, ct.RangeDim(1, cfg.max_seq_len, default=3)), dtype=np.int32)]
    inputs += [ct.TensorType(name=n, shape=shape_state) for n in ins]
    _convert_named(program, inputs, ["logits", *outs], path,
                   "heron LM decoding step: tokens + KV cache -> logits + new KV cache")
    return {"inputs": ["tokens", *ins], "outputs": ["logits", *outs]}


def export_coreml_bundle(checkpoint_dir: str | Path, out: str | Path, k: int | None = None) -> Path:
    from heron.models.lm import checkpoint
    import coremltools as ct

    model, tok, meta = checkpoint.load(checkpoint_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = export_coreml(model, out / "model.mlpackage", k)
    spec = ct.utils.load_spec(str(out / "model.mlpackage"))
    got_in = [i.name for i in spec.description.input]
    got_out = [o.name for o in spec.description.output]
    if got_in != names["inputs"] or got_out != names["outputs"]:
        raise ValueError(f"Core ML package names {got_in} -> {got_out} differ from {names}")
    shutil.copy(Path(checkpoint_dir) / checkpoint.TOKENIZER, out / "tokenizer.json")
    cfg = model.cfg
    (out / "manifest.json").write_text(json.dumps({
        "format": "heron-lm-coreml/1", "n_layers": cfg.n_layers, "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
        "active_experts": model.resolve_k(k) if cfg.n_experts else None, "eot_id": tok.eot_id,
        "min_cache_length": 1, "note": "the Core ML graph takes a cache of at least one position: prefill the "
                                       "first token with the ONNX/torch path or feed a BOS position",
        **names, "source": {"checkpoint": str(checkpoint_dir), "meta": meta}}, indent=1))
    return out
