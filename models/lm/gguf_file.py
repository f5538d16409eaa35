"""Load GGUF files (llama.cpp's format) of the dense Llama family into heron's Transformer, and their
tokenizer and chat template from the metadata. Nothing is downloaded: point it at a local file.

Weights: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors are read and dequantized to float32 by heron's
numpy-only reader (heron.runtime.gguf: memory-mapped, bounds-checked, bit-exact with the `gguf`
package's reference dequantizers); any other type is refused with a one-line error naming the tensor. llama.cpp's converter permutes the rows of Llama's q/k projections into its interleaved
RoPE layout; they are permuted back into heron's (Hugging Face's) half-split layout here.

Tokenizer (heron.runtime.tokenizer): a GGUF "gpt2" vocabulary is byte-level BPE; it is rebuilt as a `tokenizers.Tokenizer`
(vocabulary, merges, control tokens as special tokens, the pre-tokenizer its `tokenizer.ggml.pre`
names) and can be saved as tokenizer.json, so the ONNX runtime needs neither this file nor `gguf`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHITECTURES = ("llama", "qwen2")
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
MAX_FILE_BYTES = 16 << 30


def _field(reader, key: str, default=None):
    return reader.metadata.get(key, default)


def open_reader(path: str | Path):
    """-> heron.runtime.gguf.GGUFFile (its errors are ValueErrors of one line)."""
    from heron.runtime.gguf import GGUFFile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size / 2**30:.1f} GiB; heron reads GGUF files up to 16 GiB")
    return GGUFFile(path)


@dataclass
class GGUFInfo:
    architecture: str
    name: str
    file_type: str                  # the dominant tensor type, e.g. Q4_1
    bos_id: int | None
    eos_id: int | None
    chat_template: str | None
    end_ids: tuple[int, ...] = ()   # the metadata's other end-of-turn / end-of-message ids (eot, eom)


def config_from_gguf(reader):
    """The heron LMConfig a GGUF file's metadata describes (before any tensor is read)."""
    from heron.models.lm.config import LMConfig

    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; heron loads {', '.join(ARCHITECTURES)}")

    def need(key):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return v

    n_heads = int(need("attention.head_count"))
    dim = int(need("embedding_length"))
    kv = _field(reader, f"{arch}.attention.head_count_kv", n_heads)
    if isinstance(kv, list):
        raise ValueError("per-layer KV head counts are not supported")
    rope_dim = _field(reader, f"{arch}.rope.dimension_count", dim // n_heads)
    if rope_dim != dim // n_heads:
        raise ValueError(f"partial RoPE ({rope_dim} of {dim // n_heads} dims) is not supported")
    if _field(reader, f"{arch}.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"RoPE scaling {_field(reader, f'{arch}.rope.scaling.type')!r} is not supported")
    if _field(reader, f"{arch}.expert_count", 0):
        raise ValueError("GGUF mixture-of-experts models are not supported (load the Hugging Face folder instead)")
    names = set(reader.tensors)
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens") or [])
    return LMConfig(vocab_size=int(vocab), dim=dim, n_layers=int(need("block_count")), n_heads=n_heads,
                    n_kv_heads=int(kv), head_dim=dim // n_heads, ffn_dim=int(need("feed_forward_length")),
                    n_experts=0, rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
                    norm_eps=float(need("attention.layer_norm_rms_epsilon")),
                    max_seq_len=int(_field(reader, f"{arch}.context_length", 2048)),
                    tie_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names)


def info(reader) -> GGUFInfo:
    from collections import Counter
    types = Counter(t.type_name for t in reader.tensors.values() if len(t.shape) > 1)
    return GGUFInfo(architecture=_field(reader, "general.architecture"), name=_field(reader, "general.name", ""),
                    file_type=types.most_common(1)[0][0] if types else "F32",
                    bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
                    eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
                    chat_template=_field(reader, "tokenizer.chat_template"),
                    end_ids=tuple(int(v) for k in ("eot", "eom")
                                  if isinstance(v := _field(reader, f"tokenizer.ggml.{k}_token_id"), int)))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE pairs -> half-split)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor(reader, name: str) -> np.ndarray:
    t = reader.tensors[name]
    if t.type_name not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF tensor {name} is {t.type_name}; heron reads {', '.join(SUPPORTED_TYPES)}")
    return reader.tensor(name)


def load_gguf(path: str | Path, bits: int | None = None):
    """-> (heron Transformer in eval mode with the file's weights as float32, GGUFInfo); with `bits` (8 or 4)
    quantized while loading (heron.models.lm.quant.load_quantized: the fp32 model is never whole in memory)."""
    return _load_model(open_reader(path), path, bits)


def _load_model(reader, path, bits: int | None = None):
    import torch

    from heron.models.lm.model import Transformer

    cfg = config_from_gguf(reader)
    meta = info(reader)
    tensors = reader.tensors
    stored = sum(math.prod(t.shape) for t in tensors.values())
    if not 0.9 * cfg.param_count() <= stored <= 1.1 * cfg.param_count() + cfg.vocab_size * cfg.dim:
        raise ValueError(f"{path}: the metadata describes {cfg.param_count():,} parameters, the tensors hold {stored:,}")
    mapping = {"token_embd.weight": "embed.weight", "output_norm.weight": "norm.weight"}
    if not cfg.tie_embeddings:
        mapping["output.weight"] = "lm_head.weight"
    per_layer = {"attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
                 "attn_q.weight": "attn.q_proj.weight", "attn_k.weight": "attn.k_proj.weight",
                 "attn_v.weight": "attn.v_proj.weight", "attn_output.weight": "attn.o_proj.weight",
                 "ffn_gate.weight": "ffn.gate_proj.weight", "ffn_up.weight": "ffn.up_proj.weight",
                 "ffn_down.weight": "ffn.down_proj.weight"}
    if cfg.qkv_bias:
        per_layer.update({f"attn_{x}.bias": f"attn.{x}_proj.bias" for x in "qkv"})
    for i in range(cfg.n_layers):
        mapping.update({f"blk.{i}.{k}": f"layers.{i}.{v}" for k, v in per_layer.items()})
    missing = [k for k in mapping if k not in tensors]
    if missing:
        raise ValueError(f"{path}: GGUF tensors missing: {missing[:5]}")
    leftover = [k for k in tensors if k not in mapping and not k.startswith("rope_")]
    if leftover:
        raise ValueError(f"{path}: GGUF tensors heron does not know how to place: {leftover[:5]}")
    permute = meta.architecture == "llama"  # llama.cpp permutes Llama's q/k only

    def tensors():  # one at a time, dequantized to fp32
        for src, dst in mapping.items():
            w = _tensor(reader, src)
            if permute and dst.endswith(("q_proj.weight", "q_proj.bias")):
                w = _unpermute(w, cfg.n_heads)
            elif permute and dst.endswith(("k_proj.weight", "k_proj.bias")):
                w = _unpermute(w, cfg.n_kv_heads)
            yield dst, torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))

    try:
        if bits is None:
            model, missing, unexpected = Transformer.with_weights(cfg, dict(tensors()))
        else:
            from heron.models.lm.quant import load_quantized
            model, missing, unexpected = load_quantized(cfg, tensors(), bits)
    except RuntimeError as e:  # load_state_dict's shape mismatches (load_quantized names the tensor itself)
        raise ValueError(f"{path}: tensors do not match the metadata: {str(e).splitlines()[1:3]}") from None
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the metadata: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), meta


def load_gguf_with_tokenizer(path: str | Path, bits: int | None = None):
    """-> (Transformer, tokenizers.Tokenizer, GGUFInfo): everything `heron.load_lm` needs from one file
    (`bits`: quantized while loading, as `load_gguf`)."""
    from heron.runtime.tokenizer import tokenizer_from_gguf

    reader = open_reader(path)
    model, meta = _load_model(reader, path, bits)
    tok = tokenizer_from_gguf(reader)
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.get_vocab_size()} tokens, the model {model.cfg.vocab_size}")
    return model, tok, meta
