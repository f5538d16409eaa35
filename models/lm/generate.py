"""Plain autoregressive decoding as a chain of small functions (after gpt-fast): `prefill`,
`decode_one_token`, `sample`, `generate`. The engine knows nothing about tokenization except the
optional detokenizer used to put text on the yielded `Token`s.

Roster of Experts: with route.roe_samples = R > 1, each step runs R routing samples of the token as one
batch and averages their next-token distributions; sample 0 alone writes the KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from heron.models.lm.model import KVCache, Routing, Transformer, first_noisy_layer
from heron.runtime.lm import Detokenizer, Token
from heron.runtime.speculative import check_sampling


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0       # 0: greedy (argmax)
    top_p: float = 1.0             # nucleus sampling mass (1.0: off)
    seed: int | None = None        # sampling seed (None: nondeterministic)
    stop_at_eot: bool = True       # stop at the end-of-text token
    route: Routing = field(default_factory=Routing)  # k (dial-k) and Roster-of-Experts options

    def __post_init__(self):
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.seed)
        if self.route.roe_samples < 1:
            raise ValueError(f"--roe-samples must be >= 1, got {self.route.roe_samples}")


def default_roe_tau(n_layers: int, tau: float = 0.3) -> tuple[float, ...]:
    """One temperature per layer: no noise in the first half (so the samples share that compute),
    `tau` in the rest."""
    return tuple(0.0 if i < n_layers // 2 else tau for i in range(n_layers))


def next_token_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits (R, V) of one position -> probabilities (V,), averaged over the R routing samples."""
    t = temperature if temperature > 0 else 1.0
    return (logits.float() / t).softmax(-1).mean(0)


def sample(probs: torch.Tensor, temperature: float, top_p: float, generator=None) -> int:
    if temperature == 0:
        return int(probs.argmax())
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def prefill(model: Transformer, prompt: torch.Tensor, cache: KVCache, route: Routing) -> torch.Tensor:
    """prompt (1, T) -> logits (R, V) of the last position; the cache then holds the prompt."""
    return model(prompt, cache, route).logits[:, -1]


def decode_one_token(model: Transformer, token: int, cache: KVCache, route: Routing) -> torch.Tensor:
    x = torch.tensor([[token]], device=cache.k[0].device)
    return model(x, cache, route).logits[:, -1]  # (R, V)


def check_prompt(model: Transformer, prompt_ids: list[int], max_new_tokens: int) -> None:
    if not prompt_ids:
        raise ValueError("empty prompt: give at least one token of text")
    ctx = model.cfg.max_seq_len
    if len(prompt_ids) + 1 > ctx:
        raise ValueError(f"the prompt is {len(prompt_ids)} tokens; the model's context is {ctx} "
                         f"(prompt + generated tokens must fit)")


@torch.no_grad()
def generate(model: Transformer, prompt_ids: list[int], opts: GenerationOptions = GenerationOptions(),
             decode=None, eot_id: int | None = None) -> Iterator[Token]:
    """Yield generated tokens one by one. Generation ends after max_new_tokens, at end-of-text, or when
    the context is full (documented: never an error mid-stream)."""
    check_prompt(model, prompt_ids, opts.max_new_tokens)
    model.eval()
    route = opts.route
    model.resolve_k(route.k) if route.k is not None else None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(opts.seed) if opts.seed is not None else None
    cache = KVCache(model.cfg, batch=1, device=device)
    detok = Detokenizer(decode, prompt_ids)
    logits = prefill(model, torch.tensor([prompt_ids], device=device), cache, route)
    pos = len(prompt_ids)
    for _ in range(opts.max_new_tokens):
        probs = next_token_probs(logits, opts.temperature).cpu()
        tok = sample(probs, opts.temperature, opts.top_p, gen)
        yield Token(tok, detok.push(tok), pos)
        pos += 1
        if (opts.stop_at_eot and tok == eot_id) or pos >= model.cfg.max_seq_len:
            return
        logits = decode_one_token(model, tok, cache, route)


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
