"""Do SmolLM2's answers survive activations rounded to fewer bits per block of 32, as the native decoder's kernels
round them before each layer linear (issue 25: int8 activations would let VNNI's `vpdpbusd` do twice `vpdpwssd`'s
products per instruction, as llama.cpp's Q8 activations do; would fp32's answers hold?).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/probe_activation_bits.py [--levels 32767 127] [--tokens 32]

The reference is scripts/bench_smollm2.py's: `transformers` running the wheel's GGUF dequantized to fp32, greedy,
on its 8 questions (`QUESTIONS`, `MATCH_TOKENS` words each). Then the same model again with every layer linear's
input (q, k, v, o, gate, up, down; not the output head) rounded per block of 32 to +-L levels of the block's
largest magnitude (L = 32767: the native decoder's int16; 127: int8, the scale amax / 127), and each answer compared
with the reference: how many equal it, and where each first departs. Nothing is written but --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def round_blocks(x, levels: int):
    """x rounded per block of 32 along its last axis to +-levels steps of the block's largest magnitude."""
    import torch

    b = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = b.abs().amax(-1, keepdim=True)
    step = torch.where(amax > 0, amax / levels, torch.ones_like(amax))
    return (torch.round(b / step).clamp(-levels, levels) * step).reshape(x.shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[32767, 127], help="levels per sign (32767: int16)")
    ap.add_argument("--tokens", type=int, default=None, help="words per answer (default: bench_smollm2's MATCH_TOKENS)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the report (JSON) here")
    a = ap.parse_args(argv)
    if any(not 1 <= v <= 32767 for v in a.levels):
        ap.error("--levels: each in 1..32767")
    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_smollm2 import MATCH_TOKENS, QUESTIONS

    from heron.paths import named_lm_path

    torch.set_num_threads(a.threads)
    n = a.tokens or MATCH_TOKENS
    path = named_lm_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              torch_dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    levels: list[int | None] = [None]

    def rounded(module, args):
        return None if levels[0] is None else (round_blocks(args[0], levels[0]),)

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in name:
            m.register_forward_pre_hook(rounded)

    def ids_of(q):
        x = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True,
                                    return_tensors="pt")
        return x if torch.is_tensor(x) else x["input_ids"]

    @torch.no_grad()
    def greedy(ids):
        out = model(ids, use_cache=True, logits_to_keep=1)
        past, words = out.past_key_values, [int(out.logits[0, -1].argmax())]
        for _ in range(n - 1):
            out = model(torch.tensor([[words[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            words.append(int(out.logits[0, -1].argmax()))
        return words

    ref = [greedy(ids_of(q)) for q in QUESTIONS]
    report = {"questions": len(QUESTIONS), "tokens": n, "levels": {}}
    for L in a.levels:
        levels[0] = L
        got = [greedy(ids_of(q)) for q in QUESTIONS]
        first = [next((i for i, (x, y) in enumerate(zip(g, r)) if x != y), n) for g, r in zip(got, ref)]
        report["levels"][L] = {"equal_to_fp32": sum(f == n for f in first), "first_difference": first}
        print(f"activations to +-{L} per block of 32: fp32's answers {sum(f == n for f in first)}/{len(ref)}, "
              f"first differences at {first} (of {n} words)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
