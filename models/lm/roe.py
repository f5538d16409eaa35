"""Roster of Experts (training-free): the per-layer Gumbel temperatures and the compute it costs.

Decoding with it is the engine's (heron.runtime.decoding) over a TorchLM whose `routing` has
roe_samples = R > 1: each step runs R routing samples of the token as one batch and the backend returns
their averaged next-token distribution; sample 0 alone writes the KV cache.
"""
from __future__ import annotations

from heron.models.lm.model import Routing, Transformer, first_noisy_layer


def default_roe_tau(n_layers: int, tau: float = 0.3) -> tuple[float, ...]:
    """One temperature per layer: no noise in the first half (so the samples share that compute),
    `tau` in the rest."""
    return tuple(0.0 if i < n_layers // 2 else tau for i in range(n_layers))


def roe_flops_per_token(model: Transformer, route: Routing, context: int = 0) -> float:
    """Forward FLOPs per token with Roster of Experts: the layers before the first noisy one run once
    (the samples are identical there), the rest and the LM head once per sample."""
    cfg = model.cfg
    full = model.flops_per_token(context, route.k)
    if route.roe_samples == 1:
        return full
    head = 2.0 * cfg.vocab_size * cfg.dim
    per_layer = (full - head) / cfg.n_layers
    first = first_noisy_layer(route, cfg.n_layers)
    return per_layer * first + route.roe_samples * (per_layer * (cfg.n_layers - first) + head)
