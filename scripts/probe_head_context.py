"""Throw-away probe: two more inputs for the draft head, measured held out (SmolLM2's answers of
runs/head-data-f: prompt sets 1 and 2 on the int8 graph, with the streams after layers 2 and 14; the same held-out
answers as scripts/train_draft_head.py: seed 0, 5%).

--attention H: one causal attention layer (H heads, RoPE) over the head's earlier inputs of the answer, EAGLE-1's
  draft layer, trained on whole answers (batches of 16), step 2 chained from the head's own feature with its own key
  beside the true ones (EAGLE-3's training-time test); --attention 0 is the same trainer without the layer (the
  control).
--next-stream J: scripts/train_draft_head.py's head whose first step also fuses the target's own residual stream
  after layer (2, 14)[J] at the NEXT position p + 1, i.e. after the target's first layers have read x_{p+1} against
  the real cache (Kangaroo-style self-speculation: the draft would run those layers per drafted word).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python scripts/probe_head_context.py --data runs/head-data-f --attention 9 --steps 1000 --out runs/attn-probe-h9
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/probe_head_context.py --data runs/head-data-f --attention 0 --steps 1000 --out runs/attn-probe-h0
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python scripts/probe_head_context.py --data runs/head-data-f --next-stream 0 --out runs/next-l2

Nothing here ships: the held-out figures go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def rope(x, pos, base=10000.0):
    """x (B, H, L, S), pos (L,) -> rotated (pairs of halves)."""
    s = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, s, 2, dtype=torch.float32) / s))
    ang = pos[:, None].float() * inv[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : s // 2], x[..., s // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Attn(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        from heron.models.lm.draft_head import RMSNorm
        self.norm, self.h, self.s = RMSNorm(dim, eps), heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)

    def qkv_of(self, u, pos):
        B, L, D = u.shape
        q, k, v = self.qkv(self.norm(u)).view(B, L, 3, self.h, self.s).permute(2, 0, 3, 1, 4)
        return rope(q, pos), rope(k, pos), v

    def forward(self, u):
        B, L, D = u.shape
        q, k, v = self.qkv_of(u, torch.arange(L))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return u + self.out(y.transpose(1, 2).reshape(B, L, D)), (k, v)

    def chained(self, u2, kv):
        """u2 (B, L, D): step-2 inputs, u2[:, p] at position p + 1; keys: the true ones at <= p and its own."""
        B, L, D = u2.shape
        k, v = kv
        q2, k2, v2 = self.qkv_of(u2, torch.arange(1, L + 1))
        sc = q2 @ k.transpose(-1, -2) / math.sqrt(self.s)  # (B, H, L, L)
        sc = sc.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        self_sc = (q2 * k2).sum(-1, keepdim=True) / math.sqrt(self.s)
        w = torch.softmax(torch.cat([sc, self_sc], -1), -1)
        y = w[..., :L] @ v + w[..., L:] * v2
        return u2 + self.out(y.transpose(1, 2).reshape(B, L, D))


class SeqHead(nn.Module):
    def __init__(self, base, heads):
        super().__init__()
        self.base = base
        self.attn = Attn(base.cfg.dim, heads, base.cfg.norm_eps) if heads else None

    def fuse(self, h, x):
        b = self.base
        B, L, D = h.shape
        e = b.embed(x.reshape(-1)).view(B, L, D)
        return h + b.proj(torch.cat([h, b.emb_norm(e)], -1))

    def top(self, u):
        for blk in self.base.blocks:
            u = blk(u)
        return u, u @ self.base.table.T + self.base.bias

    def forward(self, h, x, x2):
        u = self.fuse(h, x)
        kv = None
        if self.attn is not None:
            u, kv = self.attn(u)
        f, logits = self.top(u)
        u2 = self.fuse(f, x2.clamp_min(0))
        if self.attn is not None:
            u2 = self.attn.chained(u2, kv)
        _, logits2 = self.top(u2)
        return f, logits, logits2


def load_seqs(folder):
    files = sorted(f for f in Path(folder).glob("*.npz") if not f.name.endswith(".tmp.npz"))
    out = []
    for i, f in enumerate(files):
        with np.load(f, allow_pickle=False) as z:
            tok = z["tokens"].astype(np.int64)
            if len(tok) < 2:
                continue
            out.append({"i": i, "h": z["hidden"], "x": tok, "ti": z["top_ids"], "tl": z["top_logprobs"]})
    return out


def batch_of(seqs):
    """Sequence positions p = 0 .. L-2 of each answer; padded to the longest."""
    L = max(len(s["x"]) - 1 for s in seqs)
    B, D, K = len(seqs), seqs[0]["h"].shape[1], seqs[0]["ti"].shape[1]
    h = np.zeros((B, L, D), np.float32); hn = np.zeros((B, L, D), np.float32)
    x = np.zeros((B, L), np.int64); x2 = np.full((B, L), -1, np.int64)
    ti = np.zeros((B, L, K), np.int64); tl = np.full((B, L, K), -30.0, np.float32)
    ti2 = np.zeros((B, L, K), np.int64); tl2 = np.full((B, L, K), -30.0, np.float32)
    m = np.zeros((B, L), bool)
    for b, s in enumerate(seqs):
        n = len(s["x"]) - 1
        h[b, :n] = s["h"][:n]; hn[b, :n] = s["h"][1:n + 1]; x[b, :n] = s["x"][:n]
        ti[b, :n] = s["ti"][1:n + 1]; tl[b, :n] = s["tl"][1:n + 1]; m[b, :n] = True
        if n >= 2:
            x2[b, :n - 1] = s["x"][1:n]; ti2[b, :n - 1] = s["ti"][2:n + 1]; tl2[b, :n - 1] = s["tl"][2:n + 1]
    t = torch.from_numpy
    return {k: t(v) for k, v in dict(h=h, hn=hn, x=x, x2=x2, ti=ti, tl=tl, ti2=ti2, tl2=tl2, m=m).items()}


def target_dist(base, ids, lp):
    r = base.row[ids]
    p = lp.exp() * (r < base.cfg.n_words)
    out = torch.zeros(*ids.shape[:-1], base.cfg.n_words + 1)
    out.scatter_add_(-1, r, p)
    out = out[..., :-1]
    return out / out.sum(-1, keepdim=True).clamp_min(1e-9)


def loss_of(model, b):
    f, lg, lg2 = model(b["h"], b["x"], b["x2"])
    m, m2 = b["m"], b["x2"] >= 0
    t1 = target_dist(model.base, b["ti"][m], b["tl"][m])
    kl1 = -(t1 * F.log_softmax(lg[m], -1)).sum(-1).mean()
    reg = F.smooth_l1_loss(f[m], b["hn"][m])
    t2 = target_dist(model.base, b["ti2"][m2], b["tl2"][m2])
    kl2 = -(t2 * F.log_softmax(lg2[m2], -1)).sum(-1).mean()
    return kl1 + reg + 0.5 * kl2, (kl1, reg, kl2)


@torch.no_grad()
def agree(model, seqs, bs=16):
    model.eval()
    h1 = n1 = h2 = n2 = 0
    words = model.base.words
    for i in range(0, len(seqs), bs):
        b = batch_of(seqs[i:i + bs])
        _, lg, lg2 = model(b["h"], b["x"], b["x2"])
        m, m2 = b["m"], b["x2"] >= 0
        h1 += int((words[lg[m].argmax(-1)] == b["ti"][m][:, 0]).sum()); n1 += int(m.sum())
        h2 += int((words[lg2[m2].argmax(-1)] == b["ti2"][m2][:, 0]).sum()); n2 += int(m2.sum())
    model.train()
    return {"step1": h1 / n1, "step2": h2 / n2, "positions": n1}


def next_stream(a):
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.models.lm import draft_head as dh
    from heron.models.lm.gguf_file import open_reader
    from heron.paths import named_lm_path

    table = dequantized(read_blocks(open_reader(named_lm_path("smollm2")), "token_embd.weight"))
    D = table.shape[1]
    files = sorted(f for f in Path(a.data).glob("*.npz") if not f.name.endswith(".tmp.npz"))
    nxt = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            L = len(z["tokens"])
            if L < 2:
                continue
            nxt.append(z["features"][1:L, a.next_stream * D:(a.next_stream + 1) * D])  # position p + 1 for p = 0 .. L-2
    data = dh.load_data(a.data)
    data.streams = np.concatenate(nxt)
    assert len(data.streams) == len(data.x)
    cfg = dh.DraftHeadConfig(dim=D, n_features=1)
    model, report = dh.train(data, table, cfg, dh.TrainOptions(steps=a.steps, threads=1), log=lambda s: print(s, flush=True))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "report.json").write_text(json.dumps({"which": a.next_stream, "steps": a.steps, **report}))
    print(json.dumps(report))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--attention", type=int, default=None, metavar="H", help="attention heads (0: the control)")
    mode.add_argument("--next-stream", type=int, default=None, choices=[0, 1], metavar="J")
    ap.add_argument("--steps", type=int, default=None, help="default 1000 (--attention), 6000 (--next-stream)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    if a.next_stream is not None:
        a.steps = a.steps or 6000
        return next_stream(a)
    a.steps, a.heads = a.steps or 1000, a.attention
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.models.lm import draft_head as dh
    from heron.models.lm.gguf_file import open_reader
    from heron.paths import named_lm_path

    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.time()
    table = dequantized(read_blocks(open_reader(named_lm_path("smollm2")), "token_embd.weight"))
    seqs = load_seqs(a.data)
    # the same held-out answers as dh.train (rng seed 0, 5% of the answer indices)
    rng = np.random.default_rng(0)
    answers = np.unique([s["i"] for s in seqs])
    val = set(rng.choice(answers, max(1, int(len(answers) * 0.05)), replace=False).tolist())
    tr, va = [s for s in seqs if s["i"] not in val], [s for s in seqs if s["i"] in val]
    data = dh.load_data(a.data)
    keep = ~np.isin(data.answer, list(val))
    words = dh.head_words(dh.HeadData(**{k: getattr(data, k)[keep] for k in dh.HeadData.__dataclass_fields__}), 8192)
    del data
    cfg = dh.DraftHeadConfig(dim=table.shape[1])
    base = dh.DraftHead(cfg, torch.from_numpy(words), torch.from_numpy(table[words]), len(table))
    model = SeqHead(base, a.heads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    print(f"{len(tr)} train answers, {len(va)} held out; load {time.time() - t0:.0f} s", flush=True)
    for step in range(1, a.steps + 1):
        idx = rng.choice(len(tr), a.batch, replace=False)
        loss, parts = loss_of(model, batch_of([tr[i] for i in idx]))
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); sched.step()
        if step % 50 == 0:
            print(f"step {step} {time.time() - t0:.0f}s loss {float(loss):.4f} "
                  + " ".join(f"{float(p):.4f}" for p in parts), flush=True)
        if step % 400 == 0 or step == a.steps:
            print(f"step {step}: held out {agree(model, va)}", flush=True)
    rep = {"heads": a.heads, "steps": a.steps, "batch": a.batch, **agree(model, va), "seconds": round(time.time() - t0)}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(a.out) / "probe.safetensors"))
    (Path(a.out) / "report.json").write_text(json.dumps(rep))
    print(json.dumps(rep))


if __name__ == "__main__":
    main()
