"""`heron lm train`: next-token training of heron's LMs, with the dial-k (MoE-PHDS) mode.

Dial-k: every step samples one k for all MoE layers from [k_min, k_max]; the router keeps only the k
best experts and renormalizes over them (the model's own top-k path, so inference at any k is the same
computation). In the last `anchor_frac` of the steps the sampling shifts toward the low anchor k_min,
the curriculum MoE-PHDS uses so that the sparsest setting is not the worst trained.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heron.models.lm import checkpoint, corpus
from heron.models.lm.model import LMConfig, Routing, Transformer, preset
from heron.models.lm.tokenizer import Tokenizer


@dataclass
class TrainOptions:
    steps: int = 1500
    batch: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    fixed_k: int | None = None        # train at one k (None: the config's top_k)
    phds: bool = False                # dial-k: sample k per step in [k_min, k_max]
    k_min: int | None = None          # default: half the config's top_k (MoE-PHDS: quality falls below ~K/2)
    k_max: int | None = None          # default: the config's top_k
    anchor_frac: float = 0.2          # last fraction of steps: shift the k distribution toward k_min
    anchor_prob: float = 0.6          # probability of k_min at the very end of the curriculum
    eval_every: int = 250
    eval_windows: int = 64


def load_corpus(text_files: list[str] | None) -> tuple[str, str, str]:
    """-> (train text, held-out text, source description)."""
    docs = corpus.text_documents(text_files) if text_files else corpus.stdlib_documents()
    train, held = corpus.split(docs)
    return train, held, ("files: " + ", ".join(map(str, text_files))) if text_files else "python-stdlib-docstrings"


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    ids = []
    for doc in text.split(corpus.DOC_SEPARATOR):
        ids.extend(tok.encode(doc))
        ids.append(tok.eot_id)
    return np.asarray(ids, dtype=np.int32)


def sample_k(step: int, opts: TrainOptions, k_min: int, k_max: int, rng: random.Random) -> int:
    """The dial-k schedule: uniform over [k_min, k_max], then an anchor curriculum toward k_min."""
    start = int(opts.steps * (1 - opts.anchor_frac))
    if step >= start and k_max > k_min:
        frac = (step - start) / max(1, opts.steps - start)
        p_anchor = 1 / (k_max - k_min + 1) + frac * (opts.anchor_prob - 1 / (k_max - k_min + 1))
        if rng.random() < p_anchor:
            return k_min
        return rng.randint(k_min + 1, k_max)
    return rng.randint(k_min, k_max)


def windows(ids: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """`count` evenly spaced, non-overlapping windows of seq_len + 1 tokens (deterministic)."""
    n = min(count, (len(ids) - 1) // (seq_len + 1))
    if n < 1:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than one window of {seq_len + 1}")
    stride = (len(ids) - 1) // n
    return torch.from_numpy(np.stack([ids[i * stride:i * stride + seq_len + 1] for i in range(n)]).astype(np.int64))


@torch.no_grad()
def perplexity(model: Transformer, data: torch.Tensor, route: Routing = Routing(), batch: int = 16) -> float:
    """exp(mean next-token NLL) over the windows in `data` (W, L+1); with RoE the samples' probabilities
    are averaged before the log."""
    model.eval()
    nll, n = 0.0, 0
    R = route.roe_samples
    for i in range(0, len(data), batch):
        x, y = data[i:i + batch, :-1], data[i:i + batch, 1:]
        logits = model(x, route=route).logits.float()  # (R*B, T, V)
        logp = logits.log_softmax(-1)
        if R > 1:
            logp = torch.logsumexp(logp.view(R, *x.shape, -1), dim=0) - math.log(R)
        nll -= logp.gather(-1, y.unsqueeze(-1)).sum().item()
        n += y.numel()
    return math.exp(nll / n)


def train(cfg: LMConfig, out: str | Path, opts: TrainOptions, text_files: list[str] | None = None,
          init: str | Path | None = None, vocab_size: int = 4096, log=print, command: str = "",
          tokenizer_from: str | Path | None = None) -> Path:
    """Train (or fine-tune from `init`) and checkpoint to `out`. tokenizer_from: reuse that checkpoint's
    tokenizer (a draft model must share its target's vocabulary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    rng = random.Random(opts.seed)
    train_text, held_text, source = load_corpus(text_files)
    if init:
        model, tok, init_meta = checkpoint.load(init)
        cfg = model.cfg
        model.train()
    else:
        tok = Tokenizer.load(Path(tokenizer_from) / checkpoint.TOKENIZER) if tokenizer_from else \
            Tokenizer.train(train_text, vocab_size)
        cfg.vocab_size = tok.vocab_size
        model = Transformer(cfg)
    train_ids, held_ids = encode(tok, train_text), encode(tok, held_text)
    held = windows(held_ids, opts.seq_len, opts.eval_windows)
    if opts.phds and not cfg.n_experts:
        raise ValueError("--phds needs an MoE model (--moe-experts > 0)")
    k_max = opts.k_max or cfg.top_k
    k_min = opts.k_min or max(1, k_max // 2)
    for k in (k_min, k_max, opts.fixed_k):
        if k is not None and cfg.n_experts:
            model.resolve_k(k)
    optim = _optimizer(model, opts)
    start = 0
    state_path = out / "train_state.pt"
    if state_path.exists() and (out / checkpoint.WEIGHTS).exists() and not init:
        model, tok, meta = checkpoint.load(out)
        model.train()
        optim = _optimizer(model, opts)
        st = torch.load(state_path, weights_only=True)
        optim.load_state_dict(st["optim"])
        start = int(st["step"])
        rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in json.loads(st["rng"])))
        log(f"resumed from step {start}")
    log(f"model {model.num_params() / 1e6:.2f} M params ({model.num_params(active=True) / 1e6:.2f} M active), "
        f"{len(train_ids)} train / {len(held_ids)} held-out tokens from {source} "
        f"(fingerprint {corpus.fingerprint(train_text)})")
    data_rng = np.random.default_rng(opts.seed + start)
    logf = open(out / "log.jsonl", "a")
    try:
        from tqdm import tqdm
        bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc="lm train")
    except ImportError:
        bar = range(start, opts.steps)
    t0 = time.time()
    model.train()
    for step in bar:
        lr = _lr(step, opts)
        for g in optim.param_groups:
            g["lr"] = lr
        if opts.phds and cfg.n_experts:
            k = sample_k(step, opts, k_min, k_max, rng)
        else:
            k = opts.fixed_k or (cfg.top_k if cfg.n_experts else None)
        starts = data_rng.integers(0, len(train_ids) - opts.seq_len - 1, opts.batch)
        batch = torch.from_numpy(np.stack([train_ids[s:s + opts.seq_len + 1] for s in starts]).astype(np.int64))
        outp = model(batch[:, :-1], route=Routing(k=k))
        loss = torch.nn.functional.cross_entropy(outp.logits.reshape(-1, outp.logits.shape[-1]), batch[:, 1:].reshape(-1))
        total = loss + cfg.router_aux_weight * outp.aux_loss
        optim.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optim.step()
        rec = {"step": step + 1, "loss": round(loss.item(), 4), "k": k, "lr": round(lr, 6)}
        if (step + 1) % opts.eval_every == 0 or step + 1 == opts.steps:
            rec["held_ppl"] = round(perplexity(model, held), 3)
            model.train()
            meta = _meta(opts, source, command, step + 1, time.time() - t0, rec["held_ppl"], k_min, k_max, init)
            meta["corpus_fingerprint"] = corpus.fingerprint(train_text)
            checkpoint.save(out, model, tok, meta)
            torch.save({"optim": optim.state_dict(), "step": step + 1, "rng": json.dumps(rng.getstate())}, state_path)
            log(json.dumps(rec))
        logf.write(json.dumps(rec) + "\n")
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=rec["loss"], k=k)
    logf.close()
    return out


def _optimizer(model: Transformer, o: TrainOptions) -> torch.optim.Optimizer:
    """AdamW; matrices (not embeddings, norms or biases) get weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(0.9, 0.95))


def _lr(step: int, o: TrainOptions) -> float:
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    frac = (step - o.warmup) / max(1, o.steps - o.warmup)
    return o.lr * (o.min_lr_frac + (1 - o.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def _meta(o: TrainOptions, source, command, step, seconds, ppl, k_min, k_max, init) -> dict:
    return {"command": command, "corpus": source, "steps": step, "batch": o.batch, "seq_len": o.seq_len,
            "lr": o.lr, "seed": o.seed, "phds": o.phds, "k_range": [k_min, k_max] if o.phds else None,
            "fixed_k": o.fixed_k, "init": str(init) if init else None, "train_seconds": round(seconds, 1),
            "held_out_ppl": ppl, "date": time.strftime("%Y-%m-%d")}


def config_for(preset_name: str, experts: int | None, top_k: int | None) -> LMConfig:
    over = {}
    if experts is not None:
        over["n_experts"] = experts
    if top_k is not None:
        over["top_k"] = top_k
    return preset(preset_name, **over)
