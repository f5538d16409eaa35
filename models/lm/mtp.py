"""Multi-token prediction with gated LoRA (arXiv 2507.11851) on a frozen heron LM.

- Mask tokens: a group of K mask tokens placed after a regular token r_j predicts the tokens at offsets
  2..K+1 after r_j (r_j's own logits already predict offset 1). Groups carry explicit positions
  (j+1..j+K) and an attention mask: a mask sees the regular tokens up to r_j and the earlier masks of its
  own group; regular tokens never see mask tokens.
- Gated LoRA: low-rank adapters on every attention projection, applied only to mask rows, so the base
  model's outputs are bit-identical with the adapter loaded.
- Sampler head: a small MLP on (embedding of the previous token, hidden state at the mask) feeding the
  frozen LM head, so the K predictions form a coherent sequence.
- Losses: next-token cross entropy at each mask, plus the consistency loss: KL from the base model's own
  distribution at the true position (what verification will compare against) to the mask's.
- Generation ("quadratic"): every verify pass carries a mask group after each of its g+1 regular tokens;
  whatever prefix is accepted, the group after it yields the next K drafts, so every target forward both
  verifies the previous drafts and proposes the next ones.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.models.lm.model import KVCache, Layout, Transformer
from heron.runtime import decoding as sp
from heron.runtime.lm import Token


@dataclass
class MTPConfig:
    n_masks: int = 4          # K: future tokens predicted per group (drafts per round)
    rank: int = 8             # LoRA rank
    alpha: float = 16.0       # LoRA scale = alpha / rank
    sampler_hidden: int = 256
    consistency_weight: float = 1.0


class _Gate:
    """Which rows of the current block are mask tokens; shared by all adapters of one model."""
    rows: torch.Tensor | None = None  # (B*T,) bool


class GatedLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, gate: _Gate):
        super().__init__()
        self.base, self.gate, self.scale = base, gate, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) * (1.0 / base.in_features ** 0.5))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        y = self.base(x)
        rows = self.gate.rows
        if rows is None or not bool(rows.any()):
            return y  # no mask token in the block: exactly the base layer
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]).clone()
        idx = rows.nonzero().squeeze(1)
        flat_y[idx] = flat_y[idx] + (flat_x[idx] @ self.A.T @ self.B.T) * self.scale
        return flat_y.view_as(y)


class MTPModel(nn.Module):
    """A frozen base Transformer plus gated LoRA, mask embeddings and the sampler head."""

    def __init__(self, base: Transformer, cfg: MTPConfig = MTPConfig()):
        super().__init__()
        self.base, self.cfg, self.gate = base, cfg, _Gate()
        for p in base.parameters():
            p.requires_grad_(False)
        for blk in base.layers:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                lin = getattr(blk.attn, name)
                lin = lin.base if isinstance(lin, GatedLoRALinear) else lin  # a new adapter replaces an old one
                setattr(blk.attn, name, GatedLoRALinear(lin, cfg.rank, cfg.alpha, self.gate))
        D = base.cfg.dim
        self.mask_emb = nn.Parameter(base.embed.weight.std().item() * torch.randn(cfg.n_masks, D))
        self.sampler = nn.Sequential(nn.Linear(2 * D, cfg.sampler_hidden), nn.SiLU(),
                                     nn.Linear(cfg.sampler_hidden, D))

    def forward_block(self, tokens: torch.Tensor, slots: torch.Tensor, layout: Layout | None, cache=None):
        """tokens (1, T) with mask rows marked by slots (T,) >= 0 (slot index) and -1 for regular tokens.
        -> (logits (1, T, V) of the base head, final hidden (1, T, D))."""
        x = self.base.embed(tokens)
        is_mask = slots >= 0
        if bool(is_mask.any()):
            x = x.clone()
            x[0, is_mask] = self.mask_emb[slots[is_mask]].to(x.dtype)
        self.gate.rows = is_mask
        try:
            out = self.base(tokens, cache, resume=(0, x), hidden_layers=(self.base.cfg.n_layers - 1,), layout=layout)
        finally:
            self.gate.rows = None
        return out.logits, out.hidden[self.base.cfg.n_layers - 1]

    def sample_logits(self, prev_tokens: torch.Tensor, h_mask: torch.Tensor) -> torch.Tensor:
        """(N,) previous tokens and (N, D) mask hidden states -> (N, V) draft logits via the frozen head."""
        z = self.sampler(torch.cat([self.base.embed(prev_tokens), h_mask], -1))
        return self.base.head(h_mask + z)


def group_layout(n_regular: int, anchors: list[int], K: int, past: int, device=None):
    """Block = n_regular regular tokens (positions past..past+n-1), then one group of K masks after each
    anchor (an index into the regular tokens). -> (slots (T,), positions (T,), allowed (T, past+T))."""
    T = n_regular + K * len(anchors)
    slots = torch.full((T,), -1, dtype=torch.long)
    pos = torch.empty(T, dtype=torch.long)
    pos[:n_regular] = torch.arange(past, past + n_regular)
    allowed = torch.zeros(T, past + T, dtype=torch.bool)
    allowed[:, :past] = True
    allowed[:n_regular, past:past + n_regular] = torch.ones(n_regular, n_regular, dtype=torch.bool).tril()
    for g, a in enumerate(anchors):
        start = n_regular + g * K
        for i in range(K):
            row = start + i
            slots[row] = i
            pos[row] = past + a + 1 + i
            allowed[row, past:past + a + 1] = True           # regular tokens up to the anchor
            allowed[row, past + start:past + row + 1] = True  # earlier masks of its own group, and itself
    return slots.to(device), pos.to(device), allowed.to(device)


# ------------------------------------------------------------------------------------------------
# training


def mtp_losses(mtp: MTPModel, batch: torch.Tensor, n_anchors: int, rng: np.random.Generator):
    """batch (1, L+K+1) of regular tokens -> (CE loss, consistency loss) over mask groups at random anchors."""
    K = mtp.cfg.n_masks
    L = batch.shape[1] - K - 1
    regular = batch[:, :L]
    anchors = sorted(rng.choice(L - 1, size=min(n_anchors, L - 1), replace=False).tolist())
    slots, pos, allowed = group_layout(L, anchors, K, 0)
    tokens = torch.cat([regular, torch.zeros(1, K * len(anchors), dtype=torch.long)], 1)
    logits, h = mtp.forward_block(tokens, slots, Layout(pos, allowed))
    with torch.no_grad():  # the base model's own next-token distributions on the true sequence
        base_logp = mtp.base(batch[:, :L + K]).logits[0].log_softmax(-1)
    h_mask = h[0, L:]                                               # (G*K, D)
    a = torch.tensor(anchors).repeat_interleave(K)                   # anchor of every mask row
    i = torch.arange(K).repeat(len(anchors))                         # slot of every mask row
    prev = batch[0, a + 1 + i]                                       # the true token before the predicted one
    target = batch[0, a + 2 + i]                                     # offset i+2 from the anchor
    draft_logits = mtp.sample_logits(prev, h_mask)
    ce = F.cross_entropy(draft_logits, target)
    consistency = F.kl_div(draft_logits.log_softmax(-1), base_logp[a + 1 + i], log_target=True, reduction="batchmean")
    return ce, consistency


def train_mtp(base: Transformer, train_ids: np.ndarray, cfg: MTPConfig, steps: int, seq_len: int = 128,
              n_anchors: int = 16, lr: float = 2e-3, seed: int = 0, batch: int = 4, log=print) -> MTPModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mtp = MTPModel(base, cfg)
    params = [p for p in mtp.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    base.eval()
    try:
        from tqdm import tqdm
        bar = tqdm(range(steps), desc="mtp train")
    except ImportError:
        bar = range(steps)
    for step in bar:
        lr_now = lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * (1 - step / steps))
        for g in opt.param_groups:
            g["lr"] = lr_now
        tot_ce = tot_kl = 0.0
        opt.zero_grad(set_to_none=True)
        for _ in range(batch):
            s = int(rng.integers(0, len(train_ids) - seq_len - cfg.n_masks - 2))
            seq = torch.from_numpy(train_ids[s:s + seq_len + cfg.n_masks + 1].astype(np.int64))[None]
            ce, kl = mtp_losses(mtp, seq, n_anchors, rng)
            ((ce + cfg.consistency_weight * kl) / batch).backward()
            tot_ce, tot_kl = tot_ce + ce.item() / batch, tot_kl + kl.item() / batch
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(ce=round(tot_ce, 3), kl=round(tot_kl, 3))
    return mtp.eval()


def save_adapter(mtp: MTPModel, folder: str | Path, meta: dict, vocabulary: dict) -> Path:
    """The adapter (LoRA factors, heads) beside a JSON card: its config, `meta` (provenance) and the
    `vocabulary` record of the model it was trained on (heron.runtime.tokenizer.vocabulary_record)."""
    import json

    from heron.models.weights_io import save_safetensors
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in mtp.state_dict().items() if not k.startswith("base.") or
             k.endswith(".A") or k.endswith(".B")}
    save_safetensors(state, str(folder / "mtp.safetensors"))
    (folder / "mtp.json").write_text(json.dumps({"format": "heron-mtp/1", "config": asdict(mtp.cfg), "meta": meta,
                                                "vocabulary": vocabulary}, indent=1))
    return folder


def load_adapter(base: Transformer, folder: str | Path, vocabulary: dict, target: str = "the target") -> MTPModel:
    """The adapter in `folder` on `base`; refused (naming both tokenizers) unless it was trained on a
    model with `vocabulary` (the target's vocabulary_record)."""
    import json

    from heron.runtime.tokenizer import require_same_vocabulary

    from safetensors.torch import load_file
    folder = Path(folder)
    for f in ("mtp.safetensors", "mtp.json"):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder} holds no MTP adapter ({f} missing); train one with heron lm train-mtp")
    doc = json.loads((folder / "mtp.json").read_text())
    if doc.get("format") != "heron-mtp/1":
        raise ValueError(f"{folder / 'mtp.json'}: not a heron MTP adapter")
    if not isinstance(doc.get("vocabulary"), dict):
        raise ValueError(f"{folder / 'mtp.json'} records no vocabulary (an adapter from before heron recorded "
                         "one): retrain it with heron lm train-mtp")
    require_same_vocabulary(f"the MTP adapter ({folder})", doc["vocabulary"], target, vocabulary)
    mtp = MTPModel(base, MTPConfig(**doc["config"]))
    try:
        state = load_file(str(folder / "mtp.safetensors"))
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{folder / 'mtp.safetensors'} is not readable: {e}") from e
    try:
        missing, unexpected = mtp.load_state_dict(state, strict=False)
    except RuntimeError as e:  # torch lists every mismatched tensor over many lines
        raise ValueError(f"MTP adapter {folder} does not fit the model (width {base.cfg.dim}): "
                         f"{str(e).splitlines()[-1].strip()}") from None
    missing = [m for m in missing if not m.startswith("base.") or m.endswith(".A") or m.endswith(".B")]
    if missing or unexpected:
        raise ValueError(f"MTP adapter does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return mtp.eval()


# ------------------------------------------------------------------------------------------------
# generation


@torch.no_grad()
def generate_mtp(mtp: MTPModel, prompt: Sequence[int], opts: sp.GenerationOptions = sp.GenerationOptions(),
                 stats: sp.DecodeStats | None = None, detok: Callable | None = None,
                 n_drafts: int | None = None, end_ids: Collection[int] = ()) -> Iterator[Token]:
    """Lossless MTP speculative generation: each target forward verifies the previous drafts and, through
    the mask group after every one of its regular tokens, proposes the next drafts."""
    base = mtp.base
    # groups may be cut to their first n_drafts masks: a mask only sees earlier masks of its own group,
    # so the shorter group computes exactly what the first slots of a full group would
    K = min(mtp.cfg.n_masks, n_drafts or mtp.cfg.n_masks)
    g_max = K
    max_len = base.cfg.max_seq_len
    sp.check_prompt(prompt, max_len)
    stats = stats if stats is not None else sp.DecodeStats(method="mtp")
    rng = np.random.default_rng(opts.seed)
    cache = KVCache(base.cfg, batch=1)
    seq = list(prompt)
    em = sp.Emitter(seq, opts, stats, detok, end_ids)
    if len(seq) > 1:
        t0 = time.perf_counter()
        base(torch.tensor([seq[:-1]]), cache)
        stats.target_time_s += time.perf_counter() - t0
    window, qs = [], None
    while not em.done and len(seq) < max_len:  # the same end as plain decoding: a full context
        g = min(len(window), max(0, min(g_max, max_len - len(seq) - 1)))
        window = window[:g]
        # the block: regular [last] + window, then one mask group per regular token; masks must fit the
        # context too, so groups are dropped near its end
        regular = [seq[-1]] + window
        n_reg = len(regular)
        room = max_len - cache.length - n_reg
        anchors = list(range(n_reg)) if room >= K * n_reg else []
        P = cache.length
        slots, pos, allowed = group_layout(n_reg, anchors, K, P)
        tokens = torch.tensor([regular + [0] * (K * len(anchors))])
        t0 = time.perf_counter()
        logits, h = mtp.forward_block(tokens, slots, Layout(pos, allowed), cache)
        cache.trim(cache.length - (P + n_reg))  # mask keys/values are transient: drop them from the cache
        stats.target_time_s += time.perf_counter() - t0
        stats.target_calls += 1
        p = sp.probs(logits[0, :n_reg].numpy(), opts.temperature, opts.top_p)
        n_acc, extra = sp.verify(p, qs, window, rng, stats) if window else (0, sp.draw(p[0], rng))
        if window:
            stats.rounds += 1
            stats.accepted.append(n_acc)
            stats.windows.append(len(window))
        yield from sp.emit_round(em, window, n_acc, extra)
        if em.done:
            return
        cache.trim(len(window) - n_acc)  # rejected drafts leave the cache; the cache holds seq[:-1]
        if not anchors:
            window, qs = [], None
            continue
        # next drafts from the group after the last accepted regular token, through the sampler
        rows = n_reg + n_acc * K + torch.arange(K)
        h_group = h[0, rows]
        prev, window, q_list = extra, [], []
        for i in range(K):
            q = sp.probs(mtp.sample_logits(torch.tensor([prev]), h_group[i:i + 1])[0].numpy(),
                         opts.temperature, opts.top_p)
            prev = sp.draw(q, rng)
            window.append(prev)
            q_list.append(q)
        qs = np.stack(q_list)
