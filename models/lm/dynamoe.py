"""DynaMoE: convert a trained dense model into nested FFN experts with a token-difficulty router.

1. Order each FFN's hidden units by importance on training text (mean |activation| x norm of the unit's
   output column), so that "the first m units" is the best m-unit sub-network. Experts are the nested
   slices of widths `levels` (fractions of the dense width).
2. Difficulty labels come from the dense model itself: a token's label at a layer is the smallest level
   whose FFN output stays within `tolerance` (relative L2) of the full FFN's output.
3. A per-layer router (one linear layer on the FFN input) learns the labels; then the model is fine-tuned
   for `steps` with every token running the expert its router picks.
4. Sensitivity s in (0, 1]: a token runs the smallest level whose cumulative router probability reaches s;
   s near 1 favours large experts, small s small ones. One checkpoint yields the whole curve.

The baseline (Flextron-style static choice) truncates every FFN to one fixed width for all tokens; it gets
the same unit ordering and the same fine-tuning budget (a width sampled per step from the same levels,
so one checkpoint also serves every width).
"""
from __future__ import annotations

import copy
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.models.lm.model import SwiGLU, Transformer
from heron.models.lm.train import perplexity


@dataclass
class DynaMoEOptions:
    levels: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0)  # expert widths as fractions of the dense FFN
    tolerance: float = 0.25        # relative output error a token may take at its label's width
    calib_windows: int = 64        # training-split windows for unit ordering and labels
    router_steps: int = 300
    steps: int = 300               # LM fine-tuning steps (the budget both methods get)
    batch: int = 16
    lr: float = 5e-4
    seed: int = 0


class DifficultyRouters(nn.Module):
    """Per-layer routers that pick each token's FFN width (`nested_widths` puts them in a model's dense FFNs).

    mode "router": each token runs the level its router picks at `sensitivity`;
    mode "static": every token runs level `static_level`; mode "full": the dense FFN.
    """

    def __init__(self, dim: int, n_layers: int, widths: list[int]):
        super().__init__()
        self.widths = widths
        self.routers = nn.ModuleList(nn.Linear(dim, len(widths)) for _ in range(n_layers))
        self.mode, self.sensitivity, self.static_level = "router", 0.5, len(widths) - 1
        self.usage: list[torch.Tensor] = []  # per call: width of every token (for active-parameter accounting)

    def levels_for(self, h, layer: int) -> torch.Tensor:
        if self.mode == "static":
            return torch.full(h.shape[:-1], self.static_level, dtype=torch.long, device=h.device)
        cum = self.routers[layer](h).softmax(-1).cumsum(-1)  # (..., L)
        # smallest level whose cumulative probability reaches the sensitivity
        return (cum < self.sensitivity).sum(-1).clamp(max=len(self.widths) - 1)

    def __call__(self, ffn: SwiGLU, h, layer: int):
        if self.mode == "full":
            return ffn(h)
        lv = self.levels_for(h, layer)
        width = torch.tensor(self.widths, device=h.device)[lv]  # (B, T)
        self.usage.append(width.flatten().float())
        a = F.silu(ffn.gate_proj(h)) * ffn.up_proj(h)  # (B, T, F); units beyond the width are masked:
        keep = torch.arange(a.shape[-1], device=h.device) < width.unsqueeze(-1)  # the same numbers as a slice
        return ffn.down_proj(a * keep)

    def active_fraction(self) -> float:
        used = torch.cat(self.usage).mean().item() if self.usage else self.widths[-1]
        self.usage = []
        return used / self.widths[-1]


def ffn_at_width(ffn: SwiGLU, x, width: int):
    """The nested sub-network of a dense FFN made of its first `width` hidden units."""
    g = F.linear(x, ffn.gate_proj.weight[:width])
    u = F.linear(x, ffn.up_proj.weight[:width])
    return F.linear(F.silu(g) * u, ffn.down_proj.weight[:, :width])


class _NestedFFN(nn.Module):
    """A dense FFN run at the widths the routers pick (stands in for a Block's `ffn` inside `nested_widths`)."""

    def __init__(self, ffn: SwiGLU, routers: DifficultyRouters, layer: int):
        super().__init__()
        self.ffn, self.layer = ffn, layer
        object.__setattr__(self, "routers", routers)  # not a submodule: the model's parameters stay its own

    def forward(self, h):
        return self.routers(self.ffn, h, self.layer)


@contextmanager
def nested_widths(model: Transformer, routers: DifficultyRouters):
    """Within the block, the model's dense FFNs run at the widths `routers` picks per token; the model's
    own modules are back in place afterwards (also on an error)."""
    blocks = [b for b in model.layers if isinstance(b.ffn, SwiGLU)]
    for b in blocks:
        b.ffn = _NestedFFN(b.ffn, routers, b.layer)
    try:
        yield model
    finally:
        for b in blocks:
            b.ffn = b.ffn.ffn


@torch.no_grad()
def order_units(model: Transformer, calib: torch.Tensor) -> None:
    """Permute each dense FFN's hidden units, most important first (in place; outputs unchanged)."""
    acts = {}
    hooks = []
    for blk in model.layers:
        def hook(mod, inp, out, i=blk.layer):
            x = inp[0]
            a = (F.silu(mod.gate_proj(x)) * mod.up_proj(x)).abs().mean((0, 1))
            acts[i] = acts.get(i, 0) + a
        hooks.append(blk.ffn.register_forward_hook(hook))
    for i in range(0, len(calib), 16):
        model(calib[i:i + 16, :-1])
    for hk in hooks:
        hk.remove()
    for blk in model.layers:
        ffn = blk.ffn
        score = acts[blk.layer] * ffn.down_proj.weight.norm(dim=0)
        order = score.argsort(descending=True)
        ffn.gate_proj.weight.copy_(ffn.gate_proj.weight[order])
        ffn.up_proj.weight.copy_(ffn.up_proj.weight[order])
        ffn.down_proj.weight.copy_(ffn.down_proj.weight[:, order])


@torch.no_grad()
def difficulty_labels(model: Transformer, calib: torch.Tensor, widths: list[int], tol: float):
    """-> per layer (inputs (N, D), labels (N,)): the smallest width within `tol` of the full FFN."""
    feats = {b.layer: [] for b in model.layers}
    labels = {b.layer: [] for b in model.layers}
    hooks = []
    for blk in model.layers:
        def hook(mod, inp, out, i=blk.layer):
            x = inp[0].reshape(-1, inp[0].shape[-1])
            full = out.reshape(-1, out.shape[-1])
            errs = torch.stack([(ffn_at_width(mod, x, w) - full).norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-6) for w in widths], -1)
            ok = errs <= tol
            ok[:, -1] = True
            feats[i].append(x)
            labels[i].append(ok.float().argmax(-1))  # first level that is within tolerance
        hooks.append(blk.ffn.register_forward_hook(hook))
    for i in range(0, len(calib), 16):
        model(calib[i:i + 16, :-1])
    for hk in hooks:
        hk.remove()
    return {i: (torch.cat(feats[i]), torch.cat(labels[i])) for i in feats}


def train_routers(routers: DifficultyRouters, data, steps: int, seed: int) -> list[float]:
    """Cross-entropy on the difficulty labels; -> final accuracy per layer."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(routers.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = 0.0
        for i, (x, y) in data.items():
            idx = torch.randint(0, len(x), (512,))
            loss = loss + F.cross_entropy(routers.routers[i](x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return [(routers.routers[i](x).argmax(-1) == y).float().mean().item() for i, (x, y) in data.items()]


def finetune(model: Transformer, routers: DifficultyRouters, train_ids: np.ndarray, opts: DynaMoEOptions,
             seq_len: int, choose_mode) -> None:
    """LM fine-tuning with the FFN widths set by `choose_mode(step, rng)` (routers stay frozen)."""
    rng = random.Random(opts.seed)
    data_rng = np.random.default_rng(opts.seed)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    model.train()
    for p in routers.parameters():
        p.requires_grad_(False)
    with nested_widths(model, routers):
        for step in range(opts.steps):
            choose_mode(step, rng)
            starts = data_rng.integers(0, len(train_ids) - seq_len - 1, opts.batch)
            batch = torch.from_numpy(np.stack([train_ids[s:s + seq_len + 1] for s in starts]).astype(np.int64))
            logits = model(batch[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            routers.usage = []
    model.eval()


@torch.no_grad()
def curve(model: Transformer, routers: DifficultyRouters, held: torch.Tensor, mode: str, points) -> list[dict]:
    rows = []
    for p in points:
        routers.mode = mode
        if mode == "router":
            routers.sensitivity = p
        else:
            routers.static_level = p
        routers.usage = []
        with nested_widths(model, routers):
            ppl = perplexity(model, held)
        rows.append({"method": "dynamoe" if mode == "router" else "static", "setting": p,
                     "ffn_active_frac": routers.active_fraction(), "ppl": ppl})
    return rows


def save_routers(routers: DifficultyRouters, path) -> None:
    from heron.models.weights_io import save_safetensors
    save_safetensors({k: v.contiguous() for k, v in routers.state_dict().items()}, str(path),
              metadata={"widths": ",".join(map(str, routers.widths))})


def run(dense: Transformer, train_ids: np.ndarray, calib: torch.Tensor, held: torch.Tensor,
        opts: DynaMoEOptions = DynaMoEOptions(), seq_len: int = 128, log=print) -> dict:
    """The whole comparison -> (report {"dense_ppl", "dynamoe": rows, "static": rows, ...}, the converted
    model, its routers)."""
    if dense.cfg.n_experts:
        raise ValueError("DynaMoE converts a dense model; this one is already MoE")
    torch.manual_seed(opts.seed)
    base = copy.deepcopy(dense).eval()
    order_units(base, calib)
    F_ = base.cfg.ffn_dim
    widths = sorted({max(1, round(f * F_)) for f in opts.levels})
    dense_ppl = perplexity(base, held)
    log(f"dense ppl {dense_ppl:.3f}; widths {widths}")

    # DynaMoE: labels -> routers -> fine-tune with routed widths
    dyn = copy.deepcopy(base)
    routers = DifficultyRouters(base.cfg.dim, base.cfg.n_layers, widths)
    labels = difficulty_labels(dyn, calib, widths, opts.tolerance)
    hist = np.bincount(torch.cat([y for _, y in labels.values()]).numpy(), minlength=len(widths))
    acc = train_routers(routers, labels, opts.router_steps, opts.seed)
    log(f"difficulty labels per level {hist.tolist()}; router accuracy {[round(a, 3) for a in acc]}")
    sens = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97]

    def dyn_mode(step, rng):  # train across the sensitivity range so one checkpoint serves all of it
        routers.mode, routers.sensitivity = "router", rng.uniform(0.1, 0.97)
    finetune(dyn, routers, train_ids, opts, seq_len, dyn_mode)
    dyn_rows = curve(dyn, routers, held, "router", sens)

    # static-width baseline: same ordering, same budget
    stat = copy.deepcopy(base)
    static_r = DifficultyRouters(base.cfg.dim, base.cfg.n_layers, widths)

    def static_mode(step, rng):
        static_r.mode, static_r.static_level = "static", rng.randrange(len(widths))
    finetune(stat, static_r, train_ids, opts, seq_len, static_mode)
    stat_rows = curve(stat, static_r, held, "static", range(len(widths)))
    report = {"dense_ppl": dense_ppl, "widths": widths, "label_histogram": hist.tolist(),
            "router_accuracy": acc, "dynamoe": dyn_rows, "static": stat_rows, "options": opts.__dict__,
            "at_half": at_fraction(dyn_rows, stat_rows, 0.5, dense_ppl)}
    return report, dyn, routers


def at_fraction(dyn_rows, stat_rows, frac: float, dense_ppl: float) -> dict:
    """Perplexity of each method at `frac` of the dense FFN's active parameters (linear interpolation
    between the measured points; None when the curve does not reach it)."""
    def interp(rows):
        pts = sorted((r["ffn_active_frac"], r["ppl"]) for r in rows)
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= frac <= x1:
                return y0 + (y1 - y0) * (frac - x0) / max(1e-9, x1 - x0)
        return None
    d, s = interp(dyn_rows), interp(stat_rows)
    return {"fraction": frac, "dynamoe_ppl": d, "static_ppl": s, "dense_ppl": dense_ppl,
            "dynamoe_vs_dense_pct": None if d is None else 100 * (d / dense_ppl - 1)}
