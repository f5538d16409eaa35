"""heron's LM configuration: the config dataclass and its named presets, without torch (the onnxruntime path reads
a GGUF file's config with it; heron.models.lm.model builds the torch model from it)."""
from __future__ import annotations

import math
from dataclasses import dataclass


MAX_PARAMS = 4_000_000_000  # what a config may describe (16 GB in fp32)


@dataclass
class LMConfig:
    vocab_size: int = 4096
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2            # < n_heads: grouped-query attention
    head_dim: int | None = None    # default dim // n_heads
    ffn_dim: int = 512             # hidden units of a dense FFN (and of dense layers in an MoE model)
    n_experts: int = 0             # 0: every FFN is dense
    top_k: int = 2                 # experts per token in training; inference may dial any k in [1, n_experts]
    expert_dim: int = 256          # hidden units of one routed expert
    shared_expert_dim: int = 0     # > 0: an always-on shared expert (Qwen2-MoE style)
    shared_expert_gate: bool = False  # sigmoid gate on the shared expert (Qwen2-MoE)
    norm_topk_prob: bool = True    # renormalize the k selected router probabilities (Mixtral: yes, OLMoE: no)
    dense_layers: tuple[int, ...] = ()  # layers that keep a dense FFN in an MoE model
    qkv_bias: bool = False
    qk_norm: bool = False          # RMSNorm over the whole q and k projections (OLMoE)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 512
    tie_embeddings: bool = True
    router_aux_weight: float = 0.01  # load-balancing loss weight (Switch Transformer form)

    def __post_init__(self):
        # bounds first: a config read from disk must not make us allocate before its weights are checked
        for name, lo, hi in (("vocab_size", 2, 1 << 20), ("dim", 1, 1 << 15), ("n_layers", 1, 512), ("n_heads", 1, 1024),
                             ("n_kv_heads", 1, 1024), ("ffn_dim", 1, 1 << 17), ("n_experts", 0, 4096), ("top_k", 1, 4096),
                             ("expert_dim", 1, 1 << 17), ("shared_expert_dim", 0, 1 << 17), ("max_seq_len", 1, 1 << 20)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"LM config: {name} must be an integer in [{lo}, {hi}], got {v!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or not 1 <= self.head_dim <= 4096):
            raise ValueError(f"LM config: head_dim must be an integer in [1, 4096], got {self.head_dim!r}")
        for name in ("rope_theta", "norm_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"LM config: {name} must be a positive number, got {v!r}")
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, {self.n_experts}], got {self.top_k}")
        self.dense_layers = tuple(self.dense_layers)
        if self.param_count() > MAX_PARAMS:
            raise ValueError(f"LM config describes {self.param_count() / 1e9:.1f} B parameters; heron loads at most "
                             f"{MAX_PARAMS / 1e9:.0f} B")

    def param_count(self) -> int:
        """Parameters this config describes (embeddings, attention, FFNs), computed without building it."""
        D, hd = self.dim, self.head_dim or self.dim // self.n_heads
        attn = D * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        dense = 3 * D * self.ffn_dim
        moe = self.n_experts * (3 * D * self.expert_dim + D) + 3 * D * self.shared_expert_dim
        layers = sum(attn + (moe if self.is_moe_layer(i) else dense) for i in range(self.n_layers))
        return layers + self.vocab_size * D * (1 if self.tie_embeddings else 2)

    def is_moe_layer(self, i: int) -> bool:
        return self.n_experts > 0 and i not in self.dense_layers


# Named presets, sizes counted with the default 4096-token vocabulary and tied embeddings.
PRESETS: dict[str, dict] = {
    # ~1M: tests and quick experiments
    "tiny": dict(dim=96, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, n_experts=4, top_k=2, expert_dim=128),
    # ~5M: the shipped default and the dial-k / RoE experiments (E=8, K=4)
    "nano": dict(dim=160, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=640, n_experts=8, top_k=4, expert_dim=256),
    # ~7.5M: the "1.5x larger" comparison model for Roster of Experts (same width, 6 layers)
    "nano-l": dict(dim=160, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=640, n_experts=8, top_k=4, expert_dim=256),
    # ~5M dense: the starting point of DynaMoE conversion
    "nano-dense": dict(dim=160, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=1024, n_experts=0),
    # ~20M: decode-speed baseline for speculative decoding
    "small": dict(dim=320, n_layers=6, n_heads=5, n_kv_heads=1, ffn_dim=1024, n_experts=8, top_k=2, expert_dim=384),
    # ~50M
    "base": dict(dim=448, n_layers=8, n_heads=7, n_kv_heads=1, ffn_dim=1536, n_experts=8, top_k=2, expert_dim=512),
}


def preset(name: str, **overrides) -> LMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return LMConfig(**{**PRESETS[name], **overrides})
