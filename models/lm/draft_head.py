"""A draft head on the target's own features (EAGLE / Hydra style; one module of DeepSeek-V3's MTP without its
attention): from the target's final hidden state h_p (the head's input at position p, whose logits chose
token x_{p+1}) and x_{p+1} itself, predict the target's distribution at p + 1, which verification compares
against, without running the target. Chained for longer windows: the head's own predicted feature stands
in for h_{p+1}.

    f = h_p + W_in [h_p ; rmsnorm(e(x_{p+1}))]            (B, D): a residual from the target's feature
    f = f + W_down(silu(W_gate n(f)) * W_up n(f))         SwiGLU blocks, pre-norm
    logits = f E_V^T + b                                  (B, N): E_V = the target's own embedding rows of the
                                                          N words the head proposes among (frozen, tied like
                                                          the target's head); b a learned prior

The N words are the likeliest in the target's answers: the head never proposes another word (verification
stays exact: a word it cannot propose is simply never drafted), and its output layer costs N / V of the
target's head. Input words outside the N share one learned embedding.

Losses (SmolLM2's answers from scripts/draft_head_data.py): KL from the target's next-token distribution (its
top-K, renormalised over the N words) to the head's, at step 1 from the target's true feature and at step 2
from the head's own feature (so chained drafts stay usable); plus smooth-L1 from f to the target's true
h_{p+1} (EAGLE's feature regression).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DraftHeadConfig:
    dim: int = 576            # D: the target's hidden size
    hidden: int = 1536        # SwiGLU width
    n_blocks: int = 1
    n_words: int = 8192       # N: the words the head proposes among
    norm_eps: float = 1e-5
    n_features: int = 0       # k: residual streams of k middle layers added to the target's feature at step 1


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, cfg: DraftHeadConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.gate = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.dim, bias=False)
        nn.init.zeros_(self.down.weight)  # starts as the identity

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class DraftHead(nn.Module):
    """words (N,) int64: the target's token ids of the head's rows; table (N, D): the target's embedding rows
    of those words (frozen)."""

    def __init__(self, cfg: DraftHeadConfig, words: torch.Tensor, table: torch.Tensor, vocab_size: int):
        super().__init__()
        assert table.shape == (cfg.n_words, cfg.dim) and words.shape == (cfg.n_words,)
        self.cfg, self.vocab_size = cfg, vocab_size
        self.register_buffer("words", words.long())
        self.register_buffer("table", table.float())  # frozen: the target's own rows
        row = torch.full((vocab_size,), cfg.n_words, dtype=torch.long)  # a word id -> its row (N: not a head word)
        row[words.long()] = torch.arange(cfg.n_words)
        self.register_buffer("row", row)
        self.oov = nn.Parameter(table.float().mean(0))  # the shared embedding of the other words
        self.emb_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as f = h: the target's own distribution one step late
        self.blocks = nn.ModuleList(SwiGLU(cfg) for _ in range(cfg.n_blocks))
        self.bias = nn.Parameter(torch.zeros(cfg.n_words))
        if cfg.n_features:  # EAGLE-3's fused input: the target's streams at several depths (step 1 only)
            self.feature_norms = nn.ModuleList(RMSNorm(cfg.dim, cfg.norm_eps) for _ in range(cfg.n_features))
            self.fuse = nn.Linear(cfg.n_features * cfg.dim, cfg.dim, bias=False)
            nn.init.zeros_(self.fuse.weight)  # starts as the head without them

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) target word ids -> (B, D)."""
        r = self.row[tokens]
        e = self.table[r.clamp(max=self.cfg.n_words - 1)]
        return torch.where((r == self.cfg.n_words)[:, None], self.oov.expand_as(e), e)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, streams: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, D) the target's feature (or the head's own), tokens (B,), streams (B, k D): the target's middle
        layers at the same position (step 1; None when h is the head's own) -> feature (B, D), logits (B, N)."""
        if streams is not None and self.cfg.n_features:
            parts = streams.float().split(self.cfg.dim, -1)
            h = h + self.fuse(torch.cat([n(x) for n, x in zip(self.feature_norms, parts)], -1))
        f = h + self.proj(torch.cat([h, self.emb_norm(self.embed(tokens))], -1))
        for b in self.blocks:
            f = b(f)
        return f, f @ self.table.T + self.bias


# ------------------------------------------------------------------------------------------------
# data: SmolLM2's answers with its features and top-K next-token log-probs (scripts/draft_head_data.py)

TOP_K = 32  # the target's next-word log-probs kept per position


def record_answer(backend, ids: list[int], new_tokens: int, temperature: float, rng: np.random.Generator) -> dict:
    """The target's answer to `ids` (an onnxruntime backend with a hidden output), with, at every position that
    chose a word, its hidden state (float16) and its top-K next-word log-probs: one training record."""
    backend.reset()
    if hasattr(backend, "reserve"):
        backend.reserve(len(ids) + new_tokens + 1)
    logits = backend.forward(ids, last=1)[-1]
    pos = len(ids) - 1
    hid, top_i, top_lp, toks = [], [], [], []
    for _ in range(new_tokens):
        hid.append(backend.hidden_at(pos).astype(np.float16))
        ti, tl = top_logprobs(logits[None])
        top_i.append(ti[0])
        top_lp.append(tl[0])
        if temperature > 0:
            lp = logits.astype(np.float64) - logits.max()
            p = np.exp(lp / temperature)
            t = int(rng.choice(len(p), p=p / p.sum()))
        else:
            t = int(np.argmax(logits))
        toks.append(t)
        if t in getattr(backend, "end_ids", ()):
            break
        logits = backend.forward([t], last=1)[-1]
        pos += 1
    return {"prompt": np.asarray(ids, np.int32), "tokens": np.asarray(toks, np.int32), "hidden": np.stack(hid),
            "top_ids": np.stack(top_i), "top_logprobs": np.stack(top_lp)}


def top_logprobs(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(L, V) logits -> the top-k ids (L, k) int32 and their log-probs (L, k) float16, likeliest first."""
    lp = logits.astype(np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    k = min(k, lp.shape[1] - 1)
    top = np.argpartition(-lp, k, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(lp, top, -1), axis=-1, kind="stable")
    top = np.take_along_axis(top, order, -1)
    return top.astype(np.int32), np.take_along_axis(lp, top, -1).astype(np.float16)


def record_forced(session, state_inputs: list[str], kv_heads: int, head_dim: int, ids: list[int],
                  tokens: list[int]) -> dict:
    """The record of an answer already generated (`tokens` after the prompt `ids`), from one teacher-forced call of
    a graph with the grown-state interface and a FEATURES_OUTPUT (heron.export.gguf_onnx.build_graph(shared_cache=
    False, feature_layers=...)): at every position that chose a word, its hidden state, the middle layers' streams
    (`features`, float16) and the top-K next-word log-probs. One prefill instead of a step per word (int8 graphs
    compute blocks of two or more rows bit-identically, heron.runtime.lm.MIN_ROWS)."""
    if not tokens:
        raise ValueError("an empty answer has nothing to record")
    feed = {"tokens": np.asarray([list(ids) + list(tokens[:-1])], np.int64),
            "last": np.array([len(tokens)], np.int64)}
    for name in state_inputs:
        feed[name] = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feed)))
    top_i, top_lp = top_logprobs(out["logits"][0])
    return {"prompt": np.asarray(ids, np.int32), "tokens": np.asarray(tokens, np.int32),
            "hidden": out["hidden"][0].astype(np.float16), "features": out["features"][0].astype(np.float16),
            "top_ids": top_i, "top_logprobs": top_lp}


@dataclass
class HeadData:
    """Every answer position p with a successor: feature h_p, chosen x_{p+1}, and at p + 1: feature, top-K."""

    h: np.ndarray          # (P, D) float16
    x: np.ndarray          # (P,) int64: the word chosen at p (fed at p + 1)
    h_next: np.ndarray     # (P, D)
    top_ids: np.ndarray    # (P, K) the target's top-K at p + 1
    top_lp: np.ndarray     # (P, K)
    x2: np.ndarray         # (P,) the word chosen at p + 1; -1 where the answer ends there (no step 2)
    top_ids2: np.ndarray   # (P, K) at p + 2
    top_lp2: np.ndarray
    answer: np.ndarray     # (P,) which answer (file) the position is from
    streams: np.ndarray    # (P, k D) float16: the middle layers' streams at p (k = 0: answers recorded without)


def load_data(folder: str | Path | Sequence[str | Path], pattern: str = "*.npz", streams: bool = True) -> HeadData:
    """The answers under `folder` (or under each of several folders), files matching `pattern` (p*.npz = prompt
    set 1, q*.npz = set 2, t*.npz = scripts/draft_head_data_batched.py's set 5). streams=False leaves out the
    middle layers' streams (answers recorded with and without them may then be mixed)."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    files = []
    for d in folders:
        found = sorted(f for f in Path(d).glob(pattern) if not f.name.endswith(".tmp.npz"))
        if not found:
            raise FileNotFoundError(f"no answers ({pattern}) in {d}: run scripts/draft_head_data.py --out {d}")
        files += found
    parts = {k: [] for k in HeadData.__dataclass_fields__}
    for i, f in enumerate(files):
        with np.load(f, allow_pickle=False) as z:
            hid, tok, ti, tl = z["hidden"], z["tokens"].astype(np.int64), z["top_ids"], z["top_logprobs"]
            streams_f = z["features"] if streams and "features" in z.files else np.zeros((len(tok), 0), np.float16)
        L = len(tok)
        if L < 2:
            continue
        p = np.arange(L - 1)  # positions with a successor
        q = np.minimum(p + 2, L - 1)
        parts["h"].append(hid[p]), parts["x"].append(tok[p]), parts["h_next"].append(hid[p + 1])
        parts["top_ids"].append(ti[p + 1]), parts["top_lp"].append(tl[p + 1])
        parts["x2"].append(np.where(p + 2 < L, tok[p + 1], -1)), parts["top_ids2"].append(ti[q])
        parts["top_lp2"].append(tl[q]), parts["answer"].append(np.full(len(p), i))
        parts["streams"].append(streams_f[p])
    if len({a.shape[1] for a in parts["streams"]}) > 1:
        raise ValueError(f"the answers under {', '.join(map(str, folders))} ({pattern}) were recorded with different "
                         "--features (load them with streams=False)")
    return HeadData(**{k: np.concatenate(v) for k, v in parts.items()})


def head_words(data: HeadData, n: int) -> np.ndarray:
    """The n likeliest words of the target's answers: counted over the chosen words and its top-3 at each
    position (so words it nearly chose count too), ties by id."""
    counts = np.bincount(np.concatenate([data.x, data.top_ids[:, :3].ravel()]).astype(np.int64))
    order = np.lexsort((np.arange(len(counts)), -counts))
    return np.sort(order[:n])


def _target_dist(model: DraftHead, ids: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """The target's top-K (B, K) as a distribution over the head's N words (mass on other words dropped,
    then renormalised)."""
    r = model.row[ids.long()]
    p = lp.float().exp() * (r < model.cfg.n_words)
    out = torch.zeros(len(ids), model.cfg.n_words + 1, device=ids.device)
    out.scatter_add_(1, r, p)
    out = out[:, :-1]
    return out / out.sum(-1, keepdim=True).clamp_min(1e-9)


def losses(model: DraftHead, batch: dict, reg_weight: float = 1.0, step2_weight: float = 0.5) -> dict:
    f, logits = model(batch["h"], batch["x"], batch.get("streams"))
    t1 = _target_dist(model, batch["top_ids"], batch["top_lp"])
    kl1 = -(t1 * F.log_softmax(logits, -1)).sum(-1).mean()
    reg = F.smooth_l1_loss(f, batch["h_next"])
    ok = batch["x2"] >= 0
    kl2 = torch.zeros((), device=f.device)
    if ok.any():
        _, logits2 = model(f[ok], batch["x2"][ok])
        t2 = _target_dist(model, batch["top_ids2"][ok], batch["top_lp2"][ok])
        kl2 = -(t2 * F.log_softmax(logits2, -1)).sum(-1).mean()
    return {"loss": kl1 + reg_weight * reg + step2_weight * kl2, "ce1": kl1, "reg": reg, "ce2": kl2}


def _batch(data: HeadData, idx: np.ndarray) -> dict:
    t = lambda a, dt=torch.float32: torch.from_numpy(np.ascontiguousarray(a[idx])).to(dt)  # noqa: E731
    return {"h": t(data.h), "x": t(data.x, torch.long), "h_next": t(data.h_next), "top_ids": t(data.top_ids, torch.long),
            "top_lp": t(data.top_lp), "x2": t(data.x2, torch.long), "top_ids2": t(data.top_ids2, torch.long),
            "top_lp2": t(data.top_lp2), "streams": t(data.streams) if data.streams.shape[1] else None}


@torch.no_grad()
def agreement(model: DraftHead, data: HeadData, idx: np.ndarray, batch: int = 4096) -> dict:
    """How often the head's first choice is the target's (step 1 from the true feature; step 2 chained from
    the head's own), and how often the target's choice is among the head's words at all."""
    model.eval()
    hit1 = hit2 = n2 = cover = 0
    for s in range(0, len(idx), batch):
        b = _batch(data, idx[s:s + batch])
        f, logits = model(b["h"], b["x"], b["streams"])
        want = b["top_ids"][:, 0]
        hit1 += int((model.words[logits.argmax(-1)] == want).sum())
        cover += int((model.row[want] < model.cfg.n_words).sum())
        ok = b["x2"] >= 0
        if ok.any():
            _, l2 = model(f[ok], b["x2"][ok])
            hit2 += int((model.words[l2.argmax(-1)] == b["top_ids2"][ok][:, 0]).sum())
            n2 += int(ok.sum())
    model.train()
    return {"top1_step1": hit1 / max(len(idx), 1), "top1_step2": hit2 / max(n2, 1), "coverage": cover / max(len(idx), 1)}


@dataclass
class TrainOptions:
    steps: int = 3000
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.05   # of the answers (whole answers: no position of them is trained on)
    seed: int = 0
    threads: int = 2


def train(data: HeadData, table: np.ndarray, cfg: DraftHeadConfig, opts: TrainOptions, log=print,
          init: DraftHead | None = None) -> tuple[DraftHead, dict]:
    """table (V, D): the target's embedding (dequantized). -> (the head, its validation report). init: a head trained
    before to go on from (its config and words are kept; cfg is ignored). Its own training answers may be among this
    run's held-out ones: the report then flatters it (in-use figures come from the benchmarks' prompts)."""
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    rng = np.random.default_rng(opts.seed)
    answers = np.unique(data.answer)
    val_answers = rng.choice(answers, max(1, int(len(answers) * opts.val_fraction)), replace=False)
    is_val = np.isin(data.answer, val_answers)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if init is not None:
        if init.vocab_size != len(table) or not torch.equal(init.table, torch.from_numpy(table[init.words.numpy()]).float()):
            raise ValueError("init: a head of another target (its output rows are not this table's)")
        model = init.train()
    else:
        words = head_words(HeadData(**{k: (getattr(data, k)[train_idx]) for k in HeadData.__dataclass_fields__}),
                           cfg.n_words)
        model = DraftHead(cfg, torch.from_numpy(words), torch.from_numpy(table[words]), len(table))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opts.lr, total_steps=opts.steps, pct_start=0.05)
    log(f"{len(train_idx)} training positions, {len(val_idx)} held out ({len(val_answers)} answers); "
        f"before training: {agreement(model, data, val_idx)}")
    for step in range(1, opts.steps + 1):
        out = losses(model, _batch(data, rng.choice(train_idx, opts.batch)))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == opts.steps:
            log(f"step {step}: " + " ".join(f"{k} {float(v.detach()):.4f}" for k, v in out.items()))
        if step % 1000 == 0 or step == opts.steps:
            log(f"step {step}: held out {agreement(model, data, val_idx)}")
    report = {"train_positions": int(len(train_idx)), "val_positions": int(len(val_idx)),
              "val_answers": int(len(val_answers)), **agreement(model, data, val_idx)}
    return model, report


def save(model: DraftHead, folder: str | Path, meta: dict) -> None:
    """safetensors weights (no pickle) + config.json."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "draft_head.safetensors"))
    (folder / "config.json").write_text(json.dumps({"config": asdict(model.cfg), "vocab_size": model.vocab_size,
                                                    **meta}, indent=1))


def load(folder: str | Path) -> DraftHead:
    from safetensors.torch import load_file
    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    cfg = DraftHeadConfig(**meta["config"])
    sd = load_file(str(folder / "draft_head.safetensors"))
    model = DraftHead(cfg, sd["words"], sd["table"], int(meta["vocab_size"]))
    model.load_state_dict(sd)
    return model.eval()
