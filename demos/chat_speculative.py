"""Continue prompts with the shipped LM, plain or with lossless speculative decoding, and see which
tokens came from accepted drafts (green) and how many tokens each target forward produced.

    python demos/chat_speculative.py                                  # interactive, Mirror-SD
    python demos/chat_speculative.py --method draft --prompt "Return the"
    python demos/chat_speculative.py --compare --prompt "Return a new"  # every method, same output
Needs the train extra (torch) for the target; the draft runs on onnxruntime.
"""
from __future__ import annotations

import argparse
import sys
import time

import heron

GREEN, RESET = "\x1b[32m", "\x1b[0m"
METHODS = ("none", "draft", "mtp", "mirror")


def run_once(lm, method: str, prompt: str, args, colour: bool) -> list[int]:
    mirror = dict(kappa=args.kappa, exit_layer=args.exit_layer) if method == "mirror" else {}  # its options alone
    spec = None if method == "none" else heron.SpeculativeOptions(method=method, gamma=args.gamma, **mirror)
    opts = heron.GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    stats = heron.DecodeStats(method=method)
    t0 = time.perf_counter()
    print(f"[{method:>6}] {prompt}", end="", flush=True)
    out = []
    for t in lm.generate(prompt, opts, spec, stats):
        out.append(t.id)
        print(f"{GREEN}{t.text}{RESET}" if colour and t.from_draft else t.text, end="", flush=True)
    dt = time.perf_counter() - t0
    extra = f", branch reuse {stats.reuse_rate:.0%}" if method == "mirror" else ""
    print(f"\n         {len(out)} tokens, {len(out) / dt:.1f} tok/s, {stats.tokens_per_target_call:.2f} tokens per "
          f"target forward{extra}" + (f", fell back: {stats.fallback}" if stats.fallback else ""))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="mirror", choices=METHODS)
    ap.add_argument("--prompt", default=None, help="one prompt (default: read prompts interactively)")
    ap.add_argument("--compare", action="store_true", help="run every method on the prompt")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--kappa", type=int, default=2)
    ap.add_argument("--exit-layer", type=int, default=2)
    args = ap.parse_args(argv)
    lm = heron.load_lm()
    colour = sys.stdout.isatty()
    prompts = [args.prompt] if args.prompt else None
    while True:
        if prompts is None:
            try:
                prompt = input("prompt> ").strip()
            except EOFError:
                return 0
            if not prompt:
                continue
        else:
            if not prompts:
                return 0
            prompt = prompts.pop()
        outs = {m: run_once(lm, m, prompt, args, colour) for m in (METHODS if args.compare else [args.method])}
        if args.compare and args.temperature == 0 and len({tuple(v) for v in outs.values()}) != 1:
            print("outputs differ between methods: this is a bug, please report it", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
