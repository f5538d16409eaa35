"""Where a SmolLM2 decoding step's time goes in heron's onnxruntime graphs, against ONNX Runtime GenAI in the
same run (issue 24), and what a block of T tokens costs (issue 25: the price of verifying a draft).

    .venv/bin/python scripts/probe_smollm2_costs.py --out runs/cost-probe.json [--rounds 3]

Decode tokens/s (128 greedy tokens after bench_smollm2.py's chat prompt; median of 3 per round, rounds
interleaved, each graph in its own process, 1 onnxruntime thread) of:
  int8, int8x2           the graphs `heron lm export smollm2 [--compute int8]` writes
  *-no-offsets           the same without Q4_1's block-offsets term (wrong weights: an upper bound on what
                         any cheaper exact offsets term could gain)
  *-int4-head            the Q8_0 head's high nibbles only, a 4-bit head of ORT GenAI's size (wrong logits: an
                         upper bound on what a 4-bit head could gain)
  *-sumrows              the block sums of x from extra MatMulNBits rows (ones over one block each) instead of
                         a Reshape + ReduceSum per input (exact in int8x2; int8 then uses its rounded sums)
  ort-genai              its own int4 model (scripts/peers/genai_peers.sh; skipped when not built)
and, for int8 and int8x2, the time of one forward of a block of T = 1, 2, 3, 4, 6, 8 tokens after 60 cached
positions, relative to T = 1, with logits for the last position only and for all T (verification needs T).
The variants are built by wrapping heron.export.gguf_onnx.linear in the child process; nothing is written
but --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2 import CODE_PROMPT, GENAI_MODEL, GENAI_PYTHON, NEW_TOKENS  # noqa: E402

VARIANTS = ["int8", "int8-no-offsets", "int8-int4-head", "int8-sumrows", "int8x2", "int8x2-no-offsets",
            "int8x2-sumrows"]
BLOCKS = (1, 2, 3, 4, 6, 8)
REPEATS = 3


def _variant_linear(kind: str):
    """A wrapper of gguf_onnx.linear that builds the probe's variant `kind` (see the docstring)."""
    from heron.export import gguf_onnx as G

    plain = G.linear

    def linear(g, x, w, hint, compute, memo, packed=None):
        if kind == "no-offsets" and w.offsets is not None:
            return plain(g, x, G.Blocks(w.n, w.k, w.bits, w.packed, w.scales), hint, compute, memo, packed)
        if kind == "int4-head" and hint == "head":
            hi = (w.packed.astype(np.int16) - 128) >> 4  # q = 16 hi + lo, hi in [-8, 7]
            u = (hi + 8).astype(np.uint8).reshape(w.n, w.k // G.BLOCK, G.BLOCK)
            return plain(g, x, G.Blocks(w.n, w.k, 4, (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8),
                                        w.scales * 16), hint, compute, memo)
        if kind == "sumrows" and w.offsets is not None:
            nb = w.k // G.BLOCK  # one extra output row per block: weight 1 on it (q 9, zero point 8), 0 elsewhere
            u = np.full((nb, nb, G.BLOCK), 8, np.uint8)
            u[np.arange(nb), np.arange(nb)] = 9
            ones = G.Blocks(nb, w.k, 4, (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8), np.ones((nb, nb), np.float32))
            y = plain(g, x, G.Blocks(w.n, w.k, 4, w.packed, w.scales).rows(ones), hint, compute, memo)
            main, sums = g.op("Split", [y, g.const(np.array([w.n, nb], np.int64), "split")], n_out=2, axis=-1)
            share = g.one("MatMul", [sums, g.const(w.offsets.T.copy(), hint + ".offsetsT")])
            return g.one("Add", [main, share], hint=hint)
        return plain(g, x, w, hint, compute, memo, packed)

    return linear


def _load(variant: str):
    from heron.export import gguf_onnx as G
    from heron.lm import _onnx_model
    from heron.paths import named_lm_path
    from heron.runtime.lm import OnnxLM

    compute, _, kind = variant.partition("-")
    if kind:
        G.linear = _variant_linear(kind)
    path = named_lm_path("smollm2")
    backend = OnnxLM.from_memory(*G.bundle_in_memory(path, compute=compute), threads=1)
    lm = _onnx_model(backend, path)  # its tokenizer and chat template, as heron.load_lm("smollm2") wraps it
    return backend, lm.encode(lm.chat_prompt([{"role": "user", "content": CODE_PROMPT}]))


def decode(variant: str) -> dict:
    b, prompt = _load(variant)
    speeds = []
    for _ in range(REPEATS):
        b.reset()
        b.reserve(len(prompt) + NEW_TOKENS)
        tok = int(np.argmax(b.forward(prompt, last=1)[-1]))
        t0 = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            tok = int(np.argmax(b.forward([tok], last=1)[-1]))
        speeds.append((NEW_TOKENS - 1) / (time.perf_counter() - t0))
    return {"decode_tok_s": {"code": speeds}}  # by prompt, as the peers' runners report it


def blocks(variant: str, reps: int = 30) -> dict:
    b, prompt = _load(variant)
    out = {}
    for last in ("1", "T"):
        ms = {}
        for T in BLOCKS:
            b.reset()
            b.reserve(200)
            b.forward(list(range(100, 160)), last=1)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                b.forward(list(range(200, 200 + T)), last=1 if last == "1" else T)
                times.append(time.perf_counter() - t0)
                b.trim(T)
            ms[T] = statistics.median(times) * 1e3
        out[f"last={last}"] = {str(T): ms[T] for T in BLOCKS}
    return out


def genai(prompts: Path) -> dict:
    p = subprocess.run([str(GENAI_PYTHON), str(Path(__file__).parent / "peers" / "genai_peers.py"), str(GENAI_MODEL),
                        str(prompts), "1"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode:
        raise SystemExit(f"ort-genai: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return {"decode_tok_s": json.loads(p.stdout.strip().splitlines()[-1])["decode_tok_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    ap.add_argument("--rounds", type=int, default=3, help="decode rounds (every graph once per round, in turn)")
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)  # child process: (decode|blocks, variant)
    args = ap.parse_args()
    if args.one:
        what, variant = args.one
        print(json.dumps(decode(variant) if what == "decode" else blocks(variant)))
        return 0
    out = Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = lambda what, v: json.loads(subprocess.run(  # noqa: E731
        [sys.executable, __file__, "--out", str(out), "--one", what, v], capture_output=True, text=True, env=env,
        check=True).stdout.strip().splitlines()[-1])
    names = list(VARIANTS)
    prompts = None
    if (GENAI_MODEL / "genai_config.json").is_file():
        import tempfile

        _, prompt = _load("int8")
        prompts = Path(tempfile.mkdtemp()) / "prompts.json"  # genai_peers.py's input: the same token ids
        prompts.write_text(json.dumps({"decode": {"code": prompt}, "long": prompt, "questions": [],
                                       "new_tokens": NEW_TOKENS, "match_tokens": 1, "repeats": REPEATS}))
        names.append("ort-genai")
    speeds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names:
            speeds[n] += (genai(prompts) if n == "ort-genai" else child("decode", n))["decode_tok_s"]["code"]
            print(f"round {r + 1}: {n} {statistics.median(speeds[n]):.1f} tokens/s", flush=True)
    costs = {v: child("blocks", v) for v in ("int8", "int8x2")}
    from heron.runtime.metrics import machine
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
              "decode_tok_s": speeds, "block_ms": costs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    ref = statistics.median(speeds["ort-genai"]) if "ort-genai" in speeds else None
    print(f"\n{result['machine']}; {result['date']}; 1 thread; decode tokens/s min / median of {REPEATS} x {args.rounds}")
    print("| graph | decode tok/s min / median | vs its shipped graph | vs ORT GenAI |\n|---|---|---|---|")
    for n, v in speeds.items():
        base = statistics.median(speeds[n.split("-")[0]]) if n != "ort-genai" else None
        rel = f"{statistics.median(v) / base:.3f}x" if base else "-"
        vs = f"{statistics.median(v) / ref:.2f}x" if ref else "-"
        print(f"| {n} | {min(v):.1f} / {statistics.median(v):.1f} | {rel} | {vs} |")
    print("\n| graph | logits for | " + " | ".join(f"T={T}" for T in BLOCKS) + " |\n|---|---|" + "---|" * len(BLOCKS))
    for v, c in costs.items():
        for last, ms in c.items():
            print(f"| {v} | {last} | " + " | ".join(f"{ms[str(T)] / c['last=1']['1']:.2f}x" for T in BLOCKS) + " |")
        print(f"(T=1 of {v}: {c['last=1']['1']:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
