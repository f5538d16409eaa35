"""Load Hugging Face-format checkpoints (config.json + *.safetensors) of the dense Llama family (Llama,
SmolLM2, Qwen2) and of the Mixtral, OLMoE and Qwen2-MoE families into heron's Transformer, so dial-k,
Roster of Experts and speculative decoding run on real architectures. Nothing is downloaded: point it
at a local folder (GGUF files: heron.models.lm.gguf_file).

Both on-disk layouts are read: per-expert tensors (`experts.3.w1.weight`, `experts.3.gate_proj.weight`)
and the fused layout of newer transformers releases (`experts.gate_up_proj`, `experts.down_proj`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from heron.models.lm.model import LMConfig, Transformer

DENSE_FAMILIES = ("llama", "qwen2")
FAMILIES = (*DENSE_FAMILIES, "mixtral", "olmoe", "qwen2_moe")


def _rope_theta(c: dict) -> float:
    for rp in (c.get("rope_parameters") or {}, c.get("rope_scaling") or {}):
        if not isinstance(rp, dict):
            raise ValueError(f"RoPE parameters must be an object, got {rp!r}")
        if rp.get("rope_type", rp.get("type", "default")) not in ("default", None):
            raise ValueError(f"RoPE scaling {rp.get('rope_type', rp.get('type'))!r} is not supported")
    rp = c.get("rope_parameters") or {}
    return float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_hf(c: dict) -> LMConfig:
    family = c.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"unsupported model_type {family!r}; heron loads {', '.join(FAMILIES)}")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {c['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if c.get("clip_qkv") is not None:
        raise ValueError("OLMoE clip_qkv is not supported")
    if c.get("use_sliding_window") or (family == "mixtral" and c.get("sliding_window")):
        raise ValueError("sliding-window attention is not supported")
    n_layers = c["num_hidden_layers"]
    common = dict(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=n_layers,
                  n_heads=c["num_attention_heads"], n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                  head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                  rope_theta=_rope_theta(c), norm_eps=c.get("rms_norm_eps", 1e-6),
                  max_seq_len=c.get("max_position_embeddings", 2048),
                  tie_embeddings=bool(c.get("tie_word_embeddings", False)))
    if family in DENSE_FAMILIES:
        if c.get("mlp_bias") or (family == "llama" and c.get("attention_bias")):
            raise ValueError("Llama with mlp_bias or attention_bias is not supported")
        return LMConfig(**common, ffn_dim=c["intermediate_size"], n_experts=0, qkv_bias=family == "qwen2")
    common["top_k"] = c["num_experts_per_tok"]
    if family == "mixtral":
        return LMConfig(**common, n_experts=c["num_local_experts"], expert_dim=c["intermediate_size"],
                        ffn_dim=c["intermediate_size"], norm_topk_prob=True)
    if family == "olmoe":
        if c.get("attention_bias"):
            raise ValueError("OLMoE with attention_bias is not supported")
        return LMConfig(**common, n_experts=c["num_experts"], expert_dim=c["intermediate_size"],
                        ffn_dim=c["intermediate_size"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                        qk_norm=True)
    step = c.get("decoder_sparse_step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= n_layers:
        raise ValueError(f"decoder_sparse_step must be an integer in [1, {n_layers}] (num_hidden_layers), got {step!r}")
    only = c.get("mlp_only_layers", [])
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers
                                         for i in only):
        raise ValueError(f"mlp_only_layers must list layer indices in [0, {n_layers - 1}], got {str(only)[:80]}")
    dense = tuple(i for i in range(n_layers) if i in only or (i + 1) % step)
    return LMConfig(**common, n_experts=c["num_experts"], expert_dim=c["moe_intermediate_size"],
                    ffn_dim=c["intermediate_size"], norm_topk_prob=bool(c.get("norm_topk_prob", False)),
                    shared_expert_dim=c.get("shared_expert_intermediate_size", 0),
                    shared_expert_gate=bool(c.get("shared_expert_intermediate_size", 0)),
                    qkv_bias=bool(c.get("qkv_bias", True)), dense_layers=dense)


def _check_size(folder: Path, cfg: LMConfig) -> None:
    """Before reading or allocating anything: the files must hold about as many parameters as the
    config describes (the header alone is read), so an edited config.json cannot make us allocate."""
    from heron.models.lm.checkpoint import header_shapes
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    stored = sum(math.prod(s) for f in files for s in header_shapes(f).values())
    if not 0.9 * cfg.param_count() <= stored <= 1.1 * cfg.param_count() + cfg.vocab_size * cfg.dim:
        raise ValueError(f"{folder}: config.json describes {cfg.param_count():,} parameters, the safetensors files "
                         f"hold {stored:,}")


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error type on corrupt headers
            raise ValueError(f"{f} is not a readable safetensors file: {e}") from e
    return out


def load_hf(folder: str | Path, dtype=torch.float32) -> Transformer:
    """A heron Transformer with the weights of the HF checkpoint in `folder` (eval mode)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    try:
        hc = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(hc, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object")
    try:
        cfg = config_from_hf(hc)
    except KeyError as e:
        raise ValueError(f"{cfg_path} lacks the key {e.args[0]!r} that a {hc.get('model_type')} config needs") from None
    except TypeError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    _check_size(folder, cfg)
    src = _read_tensors(folder)
    expert_names = {"mixtral": ("block_sparse_moe", "w1", "w3", "w2")}.get(
        hc["model_type"], ("mlp", "gate_proj", "up_proj", "down_proj"))
    state = {"embed.weight": src.pop("model.embed_tokens.weight"), "norm.weight": src.pop("model.norm.weight")}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = src.pop("lm_head.weight")
    else:
        src.pop("lm_head.weight", None)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        state[f"layers.{i}.attn_norm.weight"] = src.pop(p + "input_layernorm.weight")
        state[f"layers.{i}.ffn_norm.weight"] = src.pop(p + "post_attention_layernorm.weight")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            for kind in ("weight", "bias"):
                key = f"{p}self_attn.{name}.{kind}"
                if key in src:
                    state[f"layers.{i}.attn.{name}.{kind}"] = src.pop(key)
        if cfg.is_moe_layer(i):
            state.update(_moe_state(src, p, i, cfg, *expert_names))
        else:
            for name in ("gate_proj", "up_proj", "down_proj"):
                state[f"layers.{i}.ffn.{name}.weight"] = src.pop(f"{p}mlp.{name}.weight")
    leftover = [k for k in src if "rotary_emb" not in k]
    if leftover:
        raise ValueError(f"checkpoint tensors heron does not know how to place: {leftover[:5]}")
    try:
        model, missing, unexpected = Transformer.with_weights(cfg, {k: v.to(dtype).contiguous() for k, v in state.items()})
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint does not match its config: {str(e).splitlines()[1:3]}") from e
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype).eval()


def _moe_state(src, p, i, cfg, block, gate, up, down) -> dict[str, torch.Tensor]:
    out = {}
    m = f"{p}{block}."
    out[f"layers.{i}.ffn.router.weight"] = src.pop(m + "gate.weight")
    if m + "experts.gate_up_proj" in src:  # fused layout: (E, 2F, D) and (E, D, F)
        gu = src.pop(m + "experts.gate_up_proj")
        out[f"layers.{i}.ffn.w_gate"], out[f"layers.{i}.ffn.w_up"] = gu.chunk(2, dim=1)
        out[f"layers.{i}.ffn.w_down"] = src.pop(m + "experts.down_proj")
    else:
        E = cfg.n_experts
        out[f"layers.{i}.ffn.w_gate"] = torch.stack([src.pop(f"{m}experts.{e}.{gate}.weight") for e in range(E)])
        out[f"layers.{i}.ffn.w_up"] = torch.stack([src.pop(f"{m}experts.{e}.{up}.weight") for e in range(E)])
        out[f"layers.{i}.ffn.w_down"] = torch.stack([src.pop(f"{m}experts.{e}.{down}.weight") for e in range(E)])
    if cfg.shared_expert_dim:
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"layers.{i}.ffn.shared.{name}.weight"] = src.pop(f"{m}shared_expert.{name}.weight")
        if cfg.shared_expert_gate:
            out[f"layers.{i}.ffn.shared_gate.weight"] = src.pop(f"{m}shared_expert_gate.weight")
    return out
