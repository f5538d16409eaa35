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

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.models.lm.model import Layout, Routing, Transformer
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
        self.__dict__["base"] = base  # not a submodule: the frozen layer belongs to the base model
        self.gate, self.scale = gate, alpha / rank
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


LORA_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")  # the attention projections that carry a gated LoRA


class MTPModel(nn.Module):
    """A frozen base Transformer plus gated LoRA, mask embeddings and the sampler head.

    The LoRA layers live here and stand in for the base's attention projections only for the duration of
    a `forward_block` call: the base model (shared with plain decoding and other adapters) is never
    rewired."""

    def __init__(self, base: Transformer, cfg: MTPConfig = MTPConfig()):
        super().__init__()
        self.base, self.cfg, self.gate = base, cfg, _Gate()
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora = nn.ModuleDict({f"{i}_{name}": GatedLoRALinear(getattr(blk.attn, name), cfg.rank, cfg.alpha,
                                                                   self.gate)
                                   for i, blk in enumerate(base.layers) for name in LORA_PROJ})
        D = base.cfg.dim
        self.mask_emb = nn.Parameter(base.embed.weight.std().item() * torch.randn(cfg.n_masks, D))
        self.sampler = nn.Sequential(nn.Linear(2 * D, cfg.sampler_hidden), nn.SiLU(),
                                     nn.Linear(cfg.sampler_hidden, D))

    def forward_block(self, tokens: torch.Tensor, slots: torch.Tensor, layout: Layout | None, cache=None,
                      route: Routing = Routing()):
        """tokens (1, T) with mask rows marked by slots (T,) >= 0 (slot index) and -1 for regular tokens.
        -> (logits (1, T, V) of the base head, final hidden (1, T, D)). `route`: the target's routing (dial-k)."""
        x = self.base.embed(tokens)
        is_mask = slots >= 0
        if bool(is_mask.any()):
            x = x.clone()
            x[0, is_mask] = self.mask_emb[slots[is_mask]].to(x.dtype)
        self.gate.rows = is_mask
        for i, blk in enumerate(self.base.layers):  # the LoRA layers stand in for the projections, for this call
            for name in LORA_PROJ:
                setattr(blk.attn, name, self.lora[f"{i}_{name}"])
        try:
            h, _ = self.base.run_layers(x, cache, route, layout=layout)
        finally:
            self.gate.rows = None
            for i, blk in enumerate(self.base.layers):
                for name in LORA_PROJ:
                    setattr(blk.attn, name, self.lora[f"{i}_{name}"].base)
        return self.base.logits(h, route), h

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


def _file_key(key: str) -> str:
    """A LoRA factor's name in the adapter file (format heron-mtp/1: where it sat in the base model)."""
    if key.startswith("lora."):
        i, name, factor = re.fullmatch(r"lora\.(\d+)_(\w+)\.([AB])", key).groups()
        return f"base.layers.{i}.attn.{name}.{factor}"
    return key


def _module_key(key: str) -> str:
    m = re.fullmatch(r"base\.layers\.(\d+)\.attn\.(\w+)\.([AB])", key)
    return f"lora.{m.group(1)}_{m.group(2)}.{m.group(3)}" if m else key


def save_adapter(mtp: MTPModel, folder: str | Path, meta: dict, vocabulary: dict) -> Path:
    """The adapter (LoRA factors, heads) beside a JSON card: its config, `meta` (provenance) and the
    `vocabulary` record of the model it was trained on (heron.runtime.tokenizer.vocabulary_record)."""
    import json

    from heron.models.weights_io import save_safetensors
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {_file_key(k): v.contiguous() for k, v in mtp.state_dict().items() if not k.startswith("base.")}
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
        missing, unexpected = mtp.load_state_dict({_module_key(k): v for k, v in state.items()}, strict=False)
    except RuntimeError as e:  # torch lists every mismatched tensor over many lines
        raise ValueError(f"MTP adapter {folder} does not fit the model (width {base.cfg.dim}): "
                         f"{str(e).splitlines()[-1].strip()}") from None
    missing = [m for m in missing if not m.startswith("base.")]
    if missing or unexpected:
        raise ValueError(f"MTP adapter does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return mtp.eval()


# ------------------------------------------------------------------------------------------------
# generation


class MTPBackend:
    """The target (a TorchLM backend) with its MTP adapter, as the decoding engine's backend.

    Each forward also runs one group of mask tokens after the block's regular tokens (after every one of
    a verify block's, after the last of a longer block, as room allows) and keeps those groups' final
    hidden states; MTPDrafter turns the group after the last accepted token into the next drafts. Mask
    positions never stay in the cache, regular tokens never attend to them, and the gated LoRA acts on
    mask rows only, so the regular tokens' logits are the target's own.
    """

    def __init__(self, mtp: MTPModel, target, n_masks: int):
        self.mtp, self.target = mtp, target
        # masks per group = drafts per round (at most the adapter's n_masks); blocks of up to K + 1 tokens are
        # verify blocks: a group after every token
        self.K = n_masks
        self.vocab_size, self.max_len, self.end_ids = target.vocab_size, target.max_len, target.end_ids
        self.name = f"{target.name}+mtp"
        self.groups: dict[int, torch.Tensor] = {}  # absolute position of the anchor -> (K, D) group hidden states

    @property
    def length(self) -> int:
        return self.target.length

    @torch.no_grad()
    def forward(self, tokens: Sequence[int], last: int | None = None) -> np.ndarray:
        t, K = self.target, self.K
        n, P = len(tokens), t.length
        anchors = list(range(n)) if n <= K + 1 else [n - 1]
        if t.max_len - P - n < K * len(anchors):  # the masks must fit the context too
            anchors = []
        slots, pos, allowed = group_layout(n, anchors, K, P, device=t.device)
        x = t.block(list(tokens) + [0] * (K * len(anchors)))
        logits, h = self.mtp.forward_block(x, slots, Layout(pos, allowed), t.cache, t.route)
        t.trim(t.length - (P + n))  # mask keys/values are transient
        self.groups = {P + a: h[0, n + i * K:n + (i + 1) * K] for i, a in enumerate(anchors)}
        out = logits[0, :n] if last is None else logits[0, n - last:n]
        return out.float().cpu().numpy()

    def trim(self, n: int) -> None:
        self.target.trim(n)

    def reset(self) -> None:
        self.target.reset()
        self.groups = {}

    def snapshot(self):
        return self.target.snapshot()

    def restore(self, state) -> None:
        self.target.restore(state)


class MTPDrafter:
    """Drafts from the mask group after the last accepted token (seq[-2]; seq[-1] is the token the target
    just chose): the sampler head chains them, each conditioned on the draft before it."""

    def __init__(self, backend: MTPBackend, opts: sp.GenerationOptions):
        self.b, self.opts = backend, opts
        self.seeds = sp.DraftSeeds(opts.seed)

    @torch.no_grad()
    def propose(self, seq: list[int], g: int) -> tuple[list[int], np.ndarray | None]:
        h = self.b.groups.get(len(seq) - 2)
        if h is None:
            return [], None  # no group yet (the prompt's first step): a plain step
        rng = self.seeds.at(len(seq))
        prev, window, qs = seq[-1], [], []
        for i in range(min(g, len(h))):
            logits = self.b.mtp.sample_logits(torch.tensor([prev], device=h.device), h[i:i + 1])[0]
            q = sp.probs(logits.float().cpu().numpy(), *self.opts.sampling)
            prev = sp.draw(q, rng)
            window.append(prev)
            qs.append(q)
        return window, np.stack(qs)


def generate_mtp(mtp: MTPModel, target, prompt: Sequence[int], opts: sp.GenerationOptions = sp.GenerationOptions(),
                 stats: sp.DecodeStats | None = None, detok: Callable | None = None,
                 n_drafts: int | None = None) -> Iterator[Token]:
    """Lossless MTP speculative generation on the one decoding engine: `target` is the TorchLM backend
    (its cache, device and routing: dial-k applies); each verify forward also proposes the next drafts."""
    # groups may be cut to their first n_drafts masks: a mask only sees earlier masks of its own group,
    # so the shorter group computes exactly what the first slots of a full group would
    K = min(mtp.cfg.n_masks, n_drafts or mtp.cfg.n_masks)
    stats = stats if stats is not None else sp.DecodeStats(method="mtp")
    backend = MTPBackend(mtp, target, K)
    yield from sp.drafted(backend, MTPDrafter(backend, opts), prompt, opts, K, stats, detok)
