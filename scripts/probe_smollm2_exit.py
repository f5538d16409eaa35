"""Can SmolLM2's own lower layers draft for it? An early-exit probe for self-speculation (issue 25).

    .venv/bin/python scripts/probe_smollm2_exit.py --bundle runs/bench-b/int8x2 --out runs/exit-probe.json

The bundle (`heron lm export smollm2 --out DIR`) writes SmolLM2's own greedy continuations of varied prompts
(training: 24 prompts x 96 tokens; held out: bench_smollm2_spec.py's 20 lossless prompts x 64 tokens). The
torch model (the same GGUF, fp32) then gives, for each continuation position, the hidden state after layer L
and the final distribution. Per L: how often the final norm + head on layer L's state picks the target's
greedy token (untrained: LayerSkip's exit without early-exit training), and how often an exit head
distilled on the training continuations does (heron.models.lm.early_exit.ExitHead: RMSNorm + D x D
residual, KL to the final distribution, the model frozen; the tuned-lens recipe). On the held-out
continuations: top-1 agreement, the mean accepted run of a greedy window of g (a self-draft on the target's
own lower layers proposes exactly the target's tokens while it agrees), and the cost ratio c of drafting
one token (the bytes the first L layers and the head read over the whole model's, from the GGUF: decoding
is bound by reading weights). Predicted speed-up over plain decoding, serial: (accepted + 1) / (verify(g + 1)
+ g c) with verify(T) = 1 + 0.5 (T - 1) plain steps (runtime.decoding.VERIFY_COST, measured 0.4-0.6 per
extra token on int8x2); "free draft": the same with c = 0 (Mirror-SD's bound with the draft on the other core).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from heron.runtime.decoding import VERIFY_COST as VERIFY_PER_TOKEN  # the engine's model: 1 + 0.5 k steps for k drafts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2_spec import LOSSLESS_PROMPTS  # noqa: E402  (held-out prompts: the lossless check's 20)

TRAIN_PROMPTS = [
    "Write a Python function that checks whether a number is prime.", "What causes the seasons on Earth?",
    "Write a short story about a lighthouse keeper in four sentences.", "Explain the difference between a list and a tuple in Python.",
    "Give me a recipe for pancakes.", "What is photosynthesis?", "Write a bash command that counts the lines of every .py file.",
    "Describe the water cycle.", "Write a polite email declining a meeting invitation.", "What is the Pythagorean theorem?",
    "Write a JavaScript function that debounces another function.", "Why do cats purr?",
    "Summarize the plot of Romeo and Juliet in three sentences.", "What are the benefits of regular exercise?",
    "Write a Python class for a bank account with deposit and withdraw methods.", "How does a refrigerator work?",
    "List five countries in South America and their capitals.", "What is machine learning?",
    "Write a limerick about a programmer.", "Explain what an API is to a beginner.", "How do vaccines work?",
    "Write a SQL query that finds the ten most recent orders.", "What is the difference between weather and climate?",
    "Give three reasons to learn a second language.",
]


def continuations(bundle: str, prompts: list[str], n: int, threads: int) -> list[tuple[int, list[int]]]:
    """-> [(prompt length, prompt + continuation ids)] from the bundle's greedy decoding."""
    import heron
    from heron.runtime.decoding import GenerationOptions

    lm = heron.load_lm(bundle, threads=threads)
    opts = GenerationOptions(max_new_tokens=n, stop_at_eot=False)
    out = []
    for q in prompts:
        ids = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
        out.append((len(ids), ids + [t.id for t in lm.generate(ids, opts)]))
    return out


def features(model, seqs, layers: list[int]):
    """-> ({L: hidden states (N, D) after layer L}, final log-probs (N, V)) at every continuation position
    (the positions whose next token is generated)."""
    import torch

    hs = {L: [] for L in layers}
    finals = []
    with torch.no_grad():
        for p0, ids in seqs:
            h = model.embed(torch.tensor([ids]))
            prev = 0
            for L in sorted(layers) + [model.cfg.n_layers]:
                h, _ = model.run_layers(h, start=prev, stop=L)
                prev = L
                if L in hs:
                    hs[L].append(h[0, p0 - 1:-1].clone())
            finals.append(model.head(h)[0, p0 - 1:-1].log_softmax(-1))
    return {L: torch.cat(v) for L, v in hs.items()}, torch.cat(finals)


def fit(model, layer: int, h, target, steps: int, batch: int, lr: float, seed: int):
    import torch
    import torch.nn.functional as F

    from heron.models.lm.early_exit import ExitHead

    torch.manual_seed(seed)
    head = ExitHead(model.cfg.dim, layer, model.cfg.norm_eps)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(h), (batch,), generator=g)
        pred = head(model, h[i]).log_softmax(-1)
        loss = F.kl_div(pred, target[i], log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval(), loss.item()


def runs(agree: np.ndarray, lengths: list[int], g: int) -> float:
    """Mean accepted tokens of a greedy window of g started at every position of each held-out continuation."""
    acc, pos = [], 0
    for n in lengths:
        a = agree[pos:pos + n]
        pos += n
        for i in range(n):
            k = 0
            while k < g and i + k < n and a[i + k]:
                k += 1
            acc.append(k)
    return float(np.mean(acc))


def cost_ratio(reader, layer: int, n_layers: int, vocab: int | None = None) -> float:
    """Bytes read by the first `layer` layers + the head (its first `vocab` rows only when given) over the
    whole model's (a tied int8 head counted once)."""
    sizes = {name: int(t.nbytes) for name, t in reader.tensors.items()}
    name = "output.weight" if "output.weight" in sizes else "token_embd.weight"
    head = sizes[name]
    rows = head if vocab is None else head * min(vocab, reader.tensors[name].shape[0]) // reader.tensors[name].shape[0]
    per_layer = [sum(v for k, v in sizes.items() if k.startswith(f"blk.{i}.")) for i in range(n_layers)]
    return (sum(per_layer[:layer]) + rows) / (sum(per_layer) + head)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a folder of heron lm export smollm2 (writes the continuations)")
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 12, 16, 20, 24])
    ap.add_argument("--steps", type=int, default=300, help="exit-head training steps per layer")
    ap.add_argument("--batch", type=int, default=256, help="positions per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=8192,
                    help="also a draft head over the first N token ids only (BPE ids run roughly from frequent to rare; "
                         "verification stays exact, the draft just cannot propose the others)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    a = ap.parse_args()
    import torch

    from heron.models.lm.gguf_file import load_gguf, open_reader
    from heron.paths import named_lm_path
    from heron.runtime.metrics import machine

    torch.set_num_threads(a.threads)
    t0 = time.time()
    train = continuations(a.bundle, TRAIN_PROMPTS, 96, a.threads)
    held = continuations(a.bundle, LOSSLESS_PROMPTS, 64, a.threads)
    print(f"continuations: {sum(len(s) - p for p, s in train)} training / {sum(len(s) - p for p, s in held)} held-out "
          f"tokens, {time.time() - t0:.0f} s", flush=True)
    path = named_lm_path("smollm2")
    model, _ = load_gguf(path)
    n = model.cfg.n_layers
    if not all(1 <= L < n for L in a.layers):
        raise SystemExit(f"--layers must be in 1..{n - 1}")
    reader = open_reader(path)
    h_tr, f_tr = features(model, train, a.layers)
    h_te, f_te = features(model, held, a.layers)
    greedy = f_te.argmax(-1)
    lengths = [len(s) - p for p, s in held]
    print(f"features: {time.time() - t0:.0f} s", flush=True)
    report = {"machine": machine(), "bundle": a.bundle, "steps": a.steps, "vocab": a.vocab, "layers": {},
              "held_out_tokens": int(len(greedy)), "training_tokens": int(len(f_tr))}
    print(f"held-out greedy tokens among the first {a.vocab} ids: {(greedy < a.vocab).float().mean().item():.1%}")
    print(f"| exit after layer | c (bytes; first {a.vocab} rows) | untrained top-1 | trained top-1 | trained KL | accepted of "
          f"g = 1 / 2 / 3 / 4 | predicted speed-up serial, best g (first {a.vocab} rows) | if drafting were free, best g |")
    print("|---|---|---|---|---|---|---|---|")
    for L in a.layers:
        c, cv = cost_ratio(reader, L, n), cost_ratio(reader, L, n, a.vocab)
        with torch.no_grad():
            untrained = (model.head(h_te[L]).argmax(-1) == greedy).float().mean().item()
        head, kl = fit(model, L, h_tr[L], f_tr, a.steps, a.batch, a.lr, seed=0)
        with torch.no_grad():
            agree = (head(model, h_te[L]).argmax(-1) == greedy).numpy()
        acc = {g: runs(agree, lengths, g) for g in (1, 2, 3, 4)}
        # the reduced head: the same argmax where the greedy token is among its rows (it cannot propose the others)
        acc_v = {g: runs(agree & (greedy < a.vocab).numpy(), lengths, g) for g in acc}
        serial = {g: (acc[g] + 1) / (1 + VERIFY_PER_TOKEN * g + g * c) for g in acc}
        serial_v = {g: (acc_v[g] + 1) / (1 + VERIFY_PER_TOKEN * g + g * cv) for g in acc}
        free = {g: (acc[g] + 1) / (1 + VERIFY_PER_TOKEN * g) for g in acc}
        bs, bv, bf = max(serial, key=serial.get), max(serial_v, key=serial_v.get), max(free, key=free.get)
        row = {"cost_ratio": round(c, 3), "cost_ratio_reduced_vocab": round(cv, 3), "untrained_top1": round(untrained, 3),
               "trained_top1": round(float(agree.mean()), 3), "train_kl": round(kl, 3),
               "accepted": {g: round(v, 2) for g, v in acc.items()},
               "accepted_reduced_vocab": {g: round(v, 2) for g, v in acc_v.items()},
               "predicted_serial": {g: round(v, 2) for g, v in serial.items()},
               "predicted_serial_reduced_vocab": {g: round(v, 2) for g, v in serial_v.items()},
               "predicted_free_draft": {g: round(v, 2) for g, v in free.items()}}
        report["layers"][L] = row
        print(f"| {L} of {n} | {c:.2f} ({cv:.2f}) | {untrained:.1%} | {agree.mean():.1%} | {kl:.2f} | "
              + " / ".join(f"{acc[g]:.2f}" for g in acc)
              + f" | {serial[bs]:.2f}x (g = {bs}) ({serial_v[bv]:.2f}x, g = {bv}) | {free[bf]:.2f}x (g = {bf}) |",
              flush=True)
    print(f"total {time.time() - t0:.0f} s")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
