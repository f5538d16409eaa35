"""How the ranked head of heron's SmolLM2 graphs (heron.export.gguf_onnx.ranked_head: a 4-bit copy of the Q8_0
head ranks every word, the first 32 are scored again with the file's 8-bit rows) compares with the 8-bit head
scoring every word exactly (fp32, on the graph's own `hidden`), position by position.

    .venv/bin/python scripts/probe_ranked_head.py --out runs/ranked-head.json [--compute int8]

Positions: bench_smollm2.py's held-out text (1024 tokens, every position) and its 8 chat questions' prompts.
Per graph (ranked, and the head on every word: rank 0): how often its greedy word equals the exact head's; for
the 4-bit copy (numpy, fp32 activations): where the exact head's best word ranks among the copy's scores (the
graph rescores the first 32) and how far the copy's scores are from the exact ones. Writes only --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--compute", default="int8", choices=["int8", "int8x2"])
    args = ap.parse_args()
    import heron
    from bench_smollm2 import PPL_TOKENS, QUESTIONS, _held_out_text
    from heron.export.gguf_onnx import HEAD_RANK, bundle_in_memory, dequantized, rank_blocks, read_blocks
    from heron.models.lm.gguf_file import open_reader
    from heron.paths import named_lm_path
    from heron.runtime.lm import OnnxLM

    path = named_lm_path("smollm2")
    reader = open_reader(path)
    head = read_blocks(reader, "token_embd.weight")
    exact_w, rough_w = dequantized(head), dequantized(rank_blocks(head))
    lm = heron.load_lm("smollm2")
    texts = [lm.encode(_held_out_text())[:PPL_TOKENS]]
    texts += [lm.encode(lm.chat_prompt([{"role": "user", "content": q}])) for q in QUESTIONS]
    result = {"compute": args.compute, "rank": HEAD_RANK[args.compute], "positions": sum(map(len, texts))}
    for rank in (None, 0):
        b = OnnxLM.from_memory(*bundle_in_memory(path, compute=args.compute, rank=rank))
        agree, exact_rank, gap = 0, [], []
        for ids in texts:
            b.reset()
            logits = b.forward(ids, last=len(ids))
            hidden = np.stack([b.hidden_at(p) for p in range(len(ids))]).astype(np.float32)
            exact = hidden @ exact_w.T
            best = exact.argmax(-1)
            agree += int((logits.argmax(-1) == best).sum())
            if rank is None:
                rough = hidden @ rough_w.T
                exact_rank += list((rough > rough[np.arange(len(ids)), best][:, None]).sum(-1))
                gap += list(np.abs(rough - exact).max(-1))
        key = "ranked" if rank is None else "full_head"
        result[key] = {"greedy_equal_to_exact_head": agree / result["positions"]}
        if rank is None:
            r = np.array(exact_rank)
            result["copy"] = {"best_word_rank_max": int(r.max()), "best_word_rank_p999": float(np.quantile(r, 0.999)),
                              "best_word_first": float((r == 0).mean()),
                              "score_error_max": float(max(gap)), "score_error_median": float(np.median(gap))}
        print(key, result[key], flush=True)
    print(result.get("copy"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
