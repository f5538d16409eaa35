"""`heron lm eval`: perplexity and agreement tables on the held-out split.

- dial-k: perplexity of one checkpoint at every k, against oracles trained at each fixed k, and
  cross-sparsity agreement (top-1 next-token agreement between a model at k and at the full K; for the
  oracles: the k-oracle against the K-oracle, since each serves only its own k).
- Roster of Experts: perplexity and forward FLOPs per token against the number of samples n, and a
  larger model trained on the same data at n = 1. The temperature is chosen on training-split windows,
  never on the held-out ones that are reported.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from heron.models.lm.backend import TorchLM
from heron.models.lm.roe import default_roe_tau, roe_flops_per_token
from heron.runtime import decoding
from heron.models.lm.model import Routing, Transformer
from heron.models.lm.train import perplexity

CONTEXT_FOR_FLOPS = 64  # FLOPs include attention over this many cached positions


@torch.no_grad()
def top1(model: Transformer, data: torch.Tensor, k: int | None, batch: int = 16) -> torch.Tensor:
    out = [model(data[i:i + batch, :-1], route=Routing(k=k)).logits.argmax(-1) for i in range(0, len(data), batch)]
    return torch.cat(out)


def dial_k_table(phds: Transformer, oracles: dict[int, Transformer], data: torch.Tensor, ks: list[int]) -> list[dict]:
    """Rows per k: ppl and agreement for the dial-k checkpoint and the k-oracle (where one exists)."""
    K = max(ks)
    ref_phds = top1(phds, data, K)
    ref_oracle = top1(oracles[K], data, K) if K in oracles else None
    rows = []
    for k in ks:
        row = {"k": k, "phds_ppl": perplexity(phds, data, Routing(k=k)),
               "phds_agreement": (top1(phds, data, k) == ref_phds).float().mean().item()}
        if k in oracles:
            row["oracle_ppl"] = perplexity(oracles[k], data, Routing(k=k))
            if ref_oracle is not None:
                row["oracle_agreement"] = (top1(oracles[k], data, k) == ref_oracle).float().mean().item()
            row["ppl_gap_pct"] = 100 * (row["phds_ppl"] / row["oracle_ppl"] - 1)
        rows.append(row)
    return rows


def tune_roe_tau(model: Transformer, calib: torch.Tensor, samples: int,
                 taus=(0.1, 0.2, 0.3, 0.5)) -> tuple[float, ...]:
    """Pick the per-layer temperature schedule (default_roe_tau with one scale) on calibration windows."""
    best = min(taus, key=lambda t: perplexity(model, calib, Routing(roe_samples=samples,
                                                                    roe_tau=default_roe_tau(model.cfg.n_layers, t))))
    return default_roe_tau(model.cfg.n_layers, best)


@torch.no_grad()
def decode_ms_per_token(model: Transformer, route: Routing, tokens: int = 32) -> float:
    """Wall time of KV-cached greedy decoding per token (the samples of a token run as one batch)."""
    prompt = list(range(10, 42))
    opts = decoding.GenerationOptions(max_new_tokens=tokens, stop_at_eot=False)
    backend = TorchLM(model, routing=route)
    t0 = time.perf_counter()
    n = sum(1 for _ in decoding.plain(backend, prompt, opts))
    return 1e3 * (time.perf_counter() - t0) / n


def roe_table(model: Transformer, data: torch.Tensor, calib: torch.Tensor, samples=(1, 2, 4, 8),
              larger: Transformer | None = None) -> list[dict]:
    rows = []
    for n in samples:
        route = Routing(roe_samples=n)
        if n > 1:
            route = replace(route, roe_tau=tune_roe_tau(model, calib, n))
        rows.append({"model": "base", "n": n, "tau": list(route.roe_tau), "ppl": perplexity(model, data, route),
                     "mflops_per_token": roe_flops_per_token(model, route, CONTEXT_FOR_FLOPS) / 1e6,
                     "decode_ms_per_token": decode_ms_per_token(model, route), "params_m": model.num_params() / 1e6})
    if larger is not None:
        rows.append({"model": "larger", "n": 1, "tau": [], "ppl": perplexity(larger, data),
                     "mflops_per_token": larger.flops_per_token(CONTEXT_FOR_FLOPS) / 1e6,
                     "decode_ms_per_token": decode_ms_per_token(larger, Routing()),
                     "params_m": larger.num_params() / 1e6})
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
        if isinstance(v, list):
            return "/".join(f"{x:g}" for x in v) or "-"
        return "-" if v is None else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
