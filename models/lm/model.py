"""heron's decoder-only transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU FFNs that are
dense or mixture-of-experts. Reads top to bottom: config, cache, routing options, modules, model.

Letter legend for tensor comments (after gpt-fast):
  B = batch, T = tokens in this call, P = tokens already in the cache, D = model dim,
  H = query heads, G = key/value heads, S = head dim, E = experts, A = active experts (k), F = FFN dim,
  N = B*T flattened tokens, R = Roster-of-Experts samples.

Everything a speculative decoder needs is here: an explicit cache the caller owns with `trim(n)`,
hidden states from any layer, and the number of active experts (k) chosen per call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.models.lm.config import MAX_PARAMS, PRESETS, LMConfig, preset  # noqa: F401  (the model's API)


@dataclass(frozen=True)
class Routing:
    """Per-call routing options (none of them changes the weights)."""
    k: int | None = None                 # active experts; None = the config's top_k
    roe_samples: int = 1                 # R: Roster-of-Experts samples per token (1 = plain routing)
    roe_tau: tuple[float, ...] = ()      # per-layer Gumbel temperature; () = no noise
    seed: int = 0                        # the Gumbel noise is a hash of (seed, layer, batch row, position,
                                         # sample, expert): the same token gets the same noise whether it is
                                         # decoded alone or inside a longer block
    moe_impl: str = "loop"               # "loop": eager, fastest on CPU at any size; "gather": no
                                         # data-dependent control flow (what export traces)


class ConcatCache:
    """A functional cache for export and branching: given past (k, v) per layer, `update` concatenates
    the new block; `present` holds the results. Nothing is written in place."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        self.past = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = list(past)
        self.length = past[0][0].shape[2]

    def update(self, layer: int, k, v):
        pk, pv = self.past[layer]
        keys, values = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.present[layer] = (keys, values)
        return keys, values


class KVCache:
    """Keys and values of every layer for B sequences, up to max_len positions.

    The caller owns it; the cache moves its own offset (a block is written at `length` by every layer, and
    `length` advances when the last layer has written it: an early exit that stops below the last layer
    leaves it for the call that finishes the block); `trim(n)` drops the last n positions, which is all a
    speculative decoder needs to roll back rejected draft tokens. The model only reads `length`. The buffers hold
    what the sequence needs, growing in steps of GROW positions (doubling), never past max_len: a
    chat of a few hundred tokens on SmolLM2 (8192-position context) keeps a few MB, not 377 MB.
    """

    GROW = 256  # positions allocated at a time (at least; the capacity doubles)

    def __init__(self, cfg: LMConfig, batch: int = 1, max_len: int | None = None, dtype=torch.float32,
                 device=None):
        self.max_len = max_len or cfg.max_seq_len
        self._shape = (batch, cfg.n_kv_heads, 0, cfg.head_dim)  # (B, G, capacity, S)
        self._dtype, self._device = dtype, device
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.length = 0
        self._alloc(cfg.n_layers, min(self.GROW, self.max_len))

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def _alloc(self, n_layers: int, capacity: int) -> None:
        B, G, _, S = self._shape
        new = lambda: torch.zeros((B, G, capacity, S), dtype=self._dtype, device=self._device)  # noqa: E731
        for buf in (self.k, self.v):
            grown = [new() for _ in range(n_layers)]
            for old, g in zip(buf, grown):  # none on the first allocation
                g[:, :, :self.length] = old[:, :, :self.length]
            buf[:] = grown

    def update(self, layer: int, k, v):
        """Write layer `layer`'s keys/values of the block (B, G, T, S) at the cache's offset -> all its keys/values
        (B, G, length+T, S); the last layer's write moves the offset past the block."""
        B, T = k.shape[0], k.shape[2]
        pos0 = self.length
        if pos0 + T > self.max_len:
            raise ValueError(f"cache holds {self.length} of {self.max_len} positions; a block of {T} tokens "
                             "does not fit")
        if pos0 + T > self.capacity:  # grow (every layer at once, on the first layer's write)
            step = max(2 * self.capacity, -(-(pos0 + T) // self.GROW) * self.GROW)
            self._alloc(len(self.k), min(self.max_len, step))
        self.k[layer][:B, :, pos0:pos0 + T] = k
        self.v[layer][:B, :, pos0:pos0 + T] = v
        if layer == len(self.k) - 1:  # the block is complete
            self.length = pos0 + T
        return self.k[layer][:B, :, :pos0 + T], self.v[layer][:B, :, :pos0 + T]

    def trim(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot trim {n} positions from a cache holding {self.length}")
        self.length -= n

    def reset(self) -> None:
        self.length = 0


@dataclass
class Layout:
    """Explicit token positions (T,) and attention mask (T, P+T) for a block whose tokens are not one
    causal run (multi-token prediction appends groups of mask tokens that only some tokens may see)."""
    positions: torch.Tensor
    allowed: torch.Tensor


@dataclass
class LMOutput:
    logits: torch.Tensor                           # (B, T, V)
    aux_loss: torch.Tensor | float = 0.0           # router load-balancing loss (training)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float):
    """cos/sin of shape (T, S) for the half-split (rotate_half) RoPE layout used by Llama/Mixtral."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    ang = positions.float()[:, None] * inv[None, :]  # (T, S/2)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):  # x (B, H, T, S)
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        H, G, S, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.dim
        self.q_proj = nn.Linear(D, H * S, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(D, G * S, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(D, G * S, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * S, D, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(H * S, cfg.norm_eps)
            self.k_norm = RMSNorm(G * S, cfg.norm_eps)

    def forward(self, x, layer: int, cache: KVCache | None, rope, samples: int = 1, layout=None):
        """rope: (cos, sin) (T, S) of the block's positions, made once per forward by the Transformer."""
        cfg = self.cfg
        BR, T, _ = x.shape
        H, G, S = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(BR, T, H, S).transpose(1, 2)  # (BR, H, T, S)
        k = k.view(BR, T, G, S).transpose(1, 2)  # (BR, G, T, S)
        v = v.view(BR, T, G, S).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        B = BR // samples
        k0, v0 = k[:B], v[:B]  # sample 0 (clean routing) is the only one that writes the cache
        if cache is not None:
            keys, values = cache.update(layer, k0, v0)  # the cache writes at its own offset
        else:
            keys, values = k0, v0  # (B, G, P+T, S) with P = 0
        P = keys.shape[2] - T
        rep = H // G
        keys = keys.repeat_interleave(rep, dim=1)      # (B, H, P+T, S)
        values = values.repeat_interleave(rep, dim=1)
        q_pos = torch.arange(T, device=x.device).unsqueeze(1) + P
        allowed = torch.arange(P + T, device=x.device).unsqueeze(0) <= q_pos  # (T, P+T): query t sees keys <= P+t
        if layout is not None:
            allowed = layout.allowed

        if samples == 1:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        else:
            out = self._roe_attention(q, k, v, keys, values, allowed, samples)
        return self.o_proj(out.transpose(1, 2).reshape(BR, T, H * S))

    @staticmethod
    def _roe_attention(q, k, v, keys, values, allowed, R):
        """Attention for R routing samples that share sample 0's cache.

        Sample r's query at position t attends to sample 0's keys/values for every earlier position and to
        its own key/value at t, which is exactly what token-by-token decoding with a shared cache computes.
        """
        BR, H, T, S = q.shape
        B = BR // R
        P = keys.shape[2] - T
        rep = H // k.shape[1]
        k_own = k.repeat_interleave(rep, dim=1).view(R, B, H, T, S)
        v_own = v.repeat_interleave(rep, dim=1).view(R, B, H, T, S)
        qr = q.view(R, B, H, T, S)
        scores = torch.einsum("rbhts,bhus->rbhtu", qr, keys) / math.sqrt(S)  # (R, B, H, T, P+T)
        own = (qr * k_own).sum(-1) / math.sqrt(S)                            # (R, B, H, T)
        diag = torch.arange(T, device=q.device)
        scores[..., diag, P + diag] = own
        p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = torch.einsum("rbhtu,bhus->rbhts", p, values)
        # swap sample 0's value at the diagonal for the sample's own value
        out = out + p[..., diag, P + diag].unsqueeze(-1) * (v_own - values[None, :, :, P:])
        return out.reshape(BR, H, T, S)


def first_noisy_layer(route: Routing, n_layers: int) -> int:
    """Index of the first layer with Roster-of-Experts noise (n_layers when none is noisy)."""
    return next((i for i, t in enumerate(route.roe_tau) if t > 0), n_layers)


def gumbel_noise(seed: int, layer: int, R: int, B: int, positions, E: int):
    """Gumbel(0, 1) noise of shape (R, B, T, E) from an integer hash (murmur3 finalizer) of
    (seed, layer, sample, batch row, position, expert); sample 0 gets zeros."""
    dev = positions.device
    fields = (torch.tensor(seed * 1009 + layer, device=dev), torch.arange(R, device=dev).view(R, 1, 1, 1),
              torch.arange(B, device=dev).view(1, B, 1, 1), positions.long().view(1, 1, -1, 1),
              torch.arange(E, device=dev).view(1, 1, 1, E))
    mask = 0xFFFFFFFF
    h = torch.zeros((), dtype=torch.long, device=dev)
    for f in fields:  # low 32 bits stay exact under int64 wrap-around
        h = h ^ f
        h = ((h ^ (h >> 16)) * 0x85EBCA6B) & mask
        h = ((h ^ (h >> 13)) * 0xC2B2AE35) & mask
        h = h ^ (h >> 16)
    u = (h.double() + 0.5) / float(1 << 32)  # (R, B, T, E) in (0, 1)
    g = -torch.log(-torch.log(u)).float()
    g[0] = 0.0
    return g


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, optional shared expert. Expert weights are stacked (E, F, D)."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        E, D, F_ = cfg.n_experts, cfg.dim, cfg.expert_dim
        self.router = nn.Linear(D, E, bias=False)
        self.w_gate = nn.Parameter(torch.empty(E, F_, D))
        self.w_up = nn.Parameter(torch.empty(E, F_, D))
        self.w_down = nn.Parameter(torch.empty(E, D, F_))
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, std=0.02)
        if cfg.shared_expert_dim:
            self.shared = SwiGLU(D, cfg.shared_expert_dim)
            self.shared_gate = nn.Linear(D, 1, bias=False) if cfg.shared_expert_gate else None

    def route(self, x, k: int, tau: float = 0.0, noise_key=None):
        """-> (weights (N, A), indices (N, A), probs (N, E)).

        With tau > 0, experts are chosen by top-k of (logits + tau * Gumbel) (Roster of Experts); the
        weights stay the clean router probabilities of the chosen experts. noise_key = (seed, layer, R, B,
        positions) places the rows: they are (R, B, T) flattened, sample 0 gets no noise.
        """
        logits = self.router(x).float()  # (N, E)
        probs = logits.softmax(-1)
        select = logits
        if tau > 0 and noise_key is not None:
            select = logits + tau * gumbel_noise(*noise_key, self.cfg.n_experts).view_as(logits)
        idx = select.topk(k, dim=-1).indices  # (N, A)
        w = probs.gather(-1, idx)
        if self.cfg.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        return w.type_as(x), idx, probs

    def forward(self, x, k: int, tau: float = 0.0, noise_key=None, impl: str = "loop"):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, D)
        w, idx, probs = self.route(x, k, tau, noise_key)
        if impl == "gather":
            y = self._gathered(x, w, idx)
        else:
            y = self._looped(x, w, idx)
        if self.cfg.shared_expert_dim:
            s = self.shared(x)
            if self.shared_gate is not None:
                s = torch.sigmoid(self.shared_gate(x)) * s
            y = y + s
        aux = 0.0
        if self.training:
            # Switch-style balance loss: E * sum_e (fraction of routed slots to e) * (mean router prob of e)
            E = self.cfg.n_experts
            frac = torch.zeros(E, device=x.device).scatter_add_(0, idx.reshape(-1), torch.ones(idx.numel(), device=x.device))
            aux = E * (frac / idx.numel() * probs.mean(0)).sum()
        return y.reshape(shape), aux

    def _gathered(self, x, w, idx):
        """Few tokens (decoding): gather the A selected experts' weights per token."""
        g = torch.einsum("nd,nafd->naf", x, self.w_gate[idx])   # (N, A, F)
        u = torch.einsum("nd,nafd->naf", x, self.w_up[idx])
        h = F.silu(g) * u
        y = torch.einsum("naf,nadf->nad", h, self.w_down[idx])  # (N, A, D)
        return (y * w.unsqueeze(-1)).sum(1)

    def _looped(self, x, w, idx):
        """One matmul chain per expert over the (token, slot) pairs routed to it, grouped by one sort.
        Gathering the selected experts' weights copies A matrices per token, which on CPU costs more than
        it saves even for a single token, so eager code always takes this path."""
        A = idx.shape[1]
        flat = idx.reshape(-1)                      # (N*A,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.cfg.n_experts).tolist()
        tok = order // A                            # token of every sorted slot
        xs = x[tok]                                 # (N*A, D)
        outs, start = [], 0
        for e, c in enumerate(counts):
            if c:
                xe = xs[start:start + c]
                h = F.silu(xe @ self.w_gate[e].T) * (xe @ self.w_up[e].T)  # (c, F)
                outs.append(h @ self.w_down[e].T)                        # (c, D)
                start += c
        ys = torch.cat(outs) * w.reshape(-1)[order].unsqueeze(-1)
        return torch.zeros_like(x).index_add_(0, tok, ys)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.is_moe_layer(layer) else SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cache, pos0, route: Routing, k: int, R: int, rope, layout=None):
        x = x + self.attn(self.attn_norm(x), self.layer, cache, rope, R, layout)
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            tau = route.roe_tau[self.layer] if route.roe_tau else 0.0
            positions = torch.arange(pos0, pos0 + x.shape[1], device=x.device)
            key = (route.seed, self.layer, R, x.shape[0] // R, positions) if R > 1 and tau > 0 else None
            y, aux = self.ffn(h, k, tau, key, route.moe_impl)
        else:
            y, aux = self.ffn(h), 0.0
        return x + y, aux


class Transformer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @classmethod
    def with_weights(cls, cfg: LMConfig, state: dict) -> tuple["Transformer", list[str], list[str]]:
        """A model holding `state`'s tensors themselves: built on the meta device (no random initialisation,
        no copy), so loading a checkpoint takes its weights' memory once, not twice. -> (model, missing
        keys, unexpected keys) as load_state_dict reports them (the tied head is never missing); shape
        mismatches raise RuntimeError as load_state_dict does. Missing tensors stay on the meta device:
        callers refuse them."""
        with torch.device("meta"):
            model = cls(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
            missing = [m for m in missing if m != "lm_head.weight"]
        return model, missing, unexpected

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def resolve_k(self, k: int | None) -> int:
        if k is None:
            return self.cfg.top_k
        if not self.cfg.n_experts:
            raise ValueError("k (active experts) applies only to MoE models; this model is dense")
        if not 1 <= int(k) <= self.cfg.n_experts:
            raise ValueError(f"k must be in [1, {self.cfg.n_experts}] (the number of experts), got {k}")
        return int(k)

    def forward(self, tokens, cache: KVCache | None = None, route: Routing = Routing(),
                last: int | None = None) -> LMOutput:
        """tokens (B, T) -> logits (B*R, T, V) for the T positions (R = route.roe_samples, sample-major).

        With a cache, the block starts at position cache.length and its keys/values are appended.
        last: logits for the block's last `last` positions only (None: all); the head skips the others.
        The plain model call: research features run its parts themselves (`embed`, `run_layers`,
        `logits`): an early exit stops the layers below the top and finishes the block later, multi-token
        prediction passes its own layout, DynaMoE swaps the FFN modules (heron.models.lm.dynamoe).
        """
        x, aux = self.run_layers(self.embed(tokens), cache, route)
        return LMOutput(self.logits(x, route, last), aux)

    def run_layers(self, x, cache: KVCache | None = None, route: Routing = Routing(), start: int = 0,
                   stop: int | None = None, layout: "Layout | None" = None):
        """Hidden states (B, T, D) through layers [start, stop) -> (hidden states, router aux loss).

        The block starts at position cache.length (0 without a cache); the cache's offset moves when the last
        layer has written, so a call that stops below the top leaves it for the call that finishes the block
        (`start` = the first call's `stop`). Roster of Experts fans the batch out into R samples at the first
        noisy layer (rows sample-major from there on). layout: explicit positions and attention mask for the
        block (multi-token prediction's mask groups).
        """
        T = x.shape[1]
        if T == 0:
            raise ValueError("empty token block")
        n = self.cfg.n_layers
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"layers [{start}, {stop}) are not a range of the model's {n} layers")
        pos0 = cache.length if cache is not None else 0
        if isinstance(pos0, int) and pos0 + T > self.cfg.max_seq_len:
            raise ValueError(f"{pos0 + T} positions exceed the model's context of {self.cfg.max_seq_len}")
        k = self.resolve_k(route.k)
        R = route.roe_samples
        if R < 1:
            raise ValueError(f"roe_samples must be >= 1, got {R}")
        if route.roe_tau and len(route.roe_tau) != n:
            raise ValueError(f"roe_tau needs one temperature per layer ({n}), got {len(route.roe_tau)}")
        # Roster of Experts: the samples are identical up to the first layer with routing noise, so they
        # share that compute and fan out there into (R*B, T, D), sample-major.
        fan_out = first_noisy_layer(route, n) if R > 1 else None
        aux = 0.0
        # the RoPE tables of the block's positions: once per call, not once per layer
        positions = layout.positions if layout is not None else torch.arange(pos0, pos0 + T, device=x.device)
        rope = rope_tables(self.cfg.head_dim, positions, self.cfg.rope_theta)  # (T, S) each
        for layer in self.layers[start:stop]:
            if layer.layer == fan_out:
                x = x.repeat(R, 1, 1)
            x, a = layer(x, cache, pos0, route, k, R if fan_out is not None and layer.layer >= fan_out else 1,
                         rope, layout)
            aux = aux + a
        return x, aux

    def logits(self, x, route: Routing = Routing(), last: int | None = None):
        """The top layer's hidden states -> logits (final norm and head), for the last `last` positions only
        when given; R identical Roster-of-Experts samples when no layer was noisy."""
        R = route.roe_samples
        if R > 1 and first_noisy_layer(route, self.cfg.n_layers) >= self.cfg.n_layers:
            x = x.repeat(R, 1, 1)
        if last is not None:
            if last < 1:
                raise ValueError(f"last must be >= 1, got {last}")
            x = x[:, -last:]  # (B*R, last, D)
        return self.head(x)

    def head(self, h):
        """Final norm + LM head on a hidden state (used by early-exit heads and samplers)."""
        return self.lm_head(self.norm(h))

    def num_params(self, active: bool = False, k: int | None = None) -> int:
        """Parameter count; active=True counts what one token uses (k of E experts, embedding rows excluded)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        k = self.resolve_k(k)
        n = total - self.embed.weight.numel()  # the table is a lookup; an untied head stays counted
        for blk in self.layers:
            if isinstance(blk.ffn, MoE):
                per_expert = blk.ffn.w_gate[0].numel() * 3
                n -= per_expert * (self.cfg.n_experts - k)
        return n

    def flops_per_token(self, context: int = 0, k: int | None = None) -> float:
        """Forward FLOPs of one token: 2 x active weights (+ tied head) + attention over `context` positions."""
        w = self.num_params(active=True, k=k) + (self.embed.weight.numel() if self.cfg.tie_embeddings else 0)
        attn = 4 * self.cfg.n_layers * self.cfg.n_heads * self.cfg.head_dim * context
        return 2.0 * w + attn


def config_from_dict(d: dict) -> LMConfig:
    known = set(LMConfig.__dataclass_fields__)
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown LM config fields: {sorted(unknown)}")
    return LMConfig(**d)
