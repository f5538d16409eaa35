"""Export heron LMs to ONNX with explicit KV-cache state, and to Core ML.

The ONNX graph is one decoding step over a block of T tokens:
  inputs   tokens (1, T) int64, cached_key_i / cached_value_i (1, G, P, S) for every layer i
  outputs  logits (1, T, V), new_cached_key_i / new_cached_value_i (1, G, P + T, S)
T and P are dynamic, so the same graph prefills a prompt, decodes one token or verifies a draft block;
rolling back rejected tokens is slicing the state arrays. The number of active experts k is fixed at
export (a draft can be exported sparser than the target: dial-k). Everything the runtime needs (layer
count, heads, vocabulary, context, k, the tokenizer) travels in the artifact folder's manifest.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn

from heron.models.lm.model import ConcatCache, Routing, Transformer
from heron.export.quantize import quantize_int8
from heron.export.quiet import quietly
from heron.runtime.bundle import MANIFEST
from heron.export.lm_bundle import write_manifest
from heron.runtime.lm import state_names


class LMStep(nn.Module):
    """Export wrapper: (tokens, *state) -> (logits, *new_state), routing fixed at k."""

    def __init__(self, model: Transformer, k: int | None):
        super().__init__()
        self.model, self.route = model, Routing(k=k, moe_impl="gather")  # data-independent control flow for any T

    def forward(self, tokens, *state):
        past = [(state[2 * i], state[2 * i + 1]) for i in range(len(state) // 2)]
        cache = ConcatCache(past)
        logits = self.model(tokens, cache, self.route).logits
        return (logits, *[t for kv in cache.present for t in kv])


def empty_state(model: Transformer, length: int = 0) -> list[torch.Tensor]:
    cfg = model.cfg
    return [torch.zeros(1, cfg.n_kv_heads, length, cfg.head_dim) for _ in range(2 * cfg.n_layers)]


def export_onnx(model: Transformer, path: str | Path, k: int | None = None, opset: int = 18) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    step = LMStep(model, k).eval()
    ins, outs = state_names(model.cfg.n_layers)
    tokens = torch.zeros(1, 3, dtype=torch.long)
    state = empty_state(model, 5)
    T, P = torch.export.Dim("T", min=1, max=model.cfg.max_seq_len), torch.export.Dim("P", min=0, max=model.cfg.max_seq_len)
    dyn = {"tokens": {1: T}, "state": tuple({2: P} for _ in state)}
    with torch.no_grad():
        torch.onnx.export(step, (tokens, *state), str(path), input_names=["tokens", *ins],
                          output_names=["logits", *outs], dynamic_shapes=(dyn["tokens"], dyn["state"]),
                          dynamo=True, external_data=False, verbose=False, opset_version=opset)
    return path


@quietly
def export_bundle(checkpoint_dir: str | Path, out: str | Path, k: int | None = None, int8: bool = False,
                  name: str = "lm") -> Path:
    """A self-describing runtime folder from a heron checkpoint: model.onnx (+ model.int8.onnx),
    tokenizer.json, manifest.json (shapes, state names, k, eot id, provenance, sha256 of every file)."""
    from heron.models.lm import checkpoint
    model, tok, meta = checkpoint.load(checkpoint_dir)
    return write_bundle(model, out, k=k, int8=int8, name=name, tokenizer=Path(checkpoint_dir) / checkpoint.TOKENIZER,
                        eot_id=tok.eot_id, source={"checkpoint": str(checkpoint_dir), "meta": meta})


def write_bundle(model: Transformer, out: str | Path, k: int | None = None, int8: bool = False, name: str = "lm",
                 tokenizer: Path | None = None, eot_id: int | None = None, source: dict | None = None) -> Path:
    if k is not None:
        model.resolve_k(k)  # a k the model cannot run is refused in one line, before --out is created
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, "manifest.sha256", "model.int8.onnx", "tokenizer.json"):
        (out / stale).unlink(missing_ok=True)
    export_onnx(model, out / "model.onnx", k)
    files = ["model.onnx"]
    if int8:
        quantize_int8(out / "model.onnx", out / "model.int8.onnx", per_channel=True, op_types=("MatMul", "Gemm"),
                      gathered=True)  # MoE experts are gathered stacks: int8 too
        files.append("model.int8.onnx")
    if tokenizer is not None:  # test models come without one; such a bundle takes token ids only
        shutil.copy(tokenizer, out / "tokenizer.json")
        files.append("tokenizer.json")
    cfg = model.cfg
    return write_manifest(out, files, cfg, name=name, eot_id=eot_id, source=source,
                          active_experts=model.resolve_k(k) if cfg.n_experts else None)


