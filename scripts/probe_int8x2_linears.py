"""SmolLM2 graphs with int8x2's split on some linears only (issue 24: how much of fp32's answers each kind of linear
buys back, at what speed), for scripts/probe_smollm2_ties.py and scripts/ab_smollm2_bundles.py.

    .venv/bin/python scripts/probe_int8x2_linears.py --out runs/x2-qkv-ffn --kinds qkv gate_up --attention one-row

Writes a bundle folder (as `heron lm export smollm2 --compute int8x2 --head-rank 32` writes it) whose linears of the
given kinds (qkv: the fused Q/K/V projection, o: the output projection, gate_up, down) in the given layers run
int8x2's two rows (heron.export.gguf_onnx.split_int8; Q4_1's offsets as the exact fp32 term, int8x2's default), the
others int8's one row (offsets folded in two levels, int8's default). --attention one-row builds the graph `heron lm
generate --fast-steps` runs (attention's one-row kernels); rows (default) the exact-steps graph. A probe, not a
product path: the selection wraps gguf_onnx.linear for this process only. Writes only --out.
"""
from __future__ import annotations

import argparse
import re

KINDS = ("qkv", "o", "gate_up", "down")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--gguf", default="smollm2", help="a Llama GGUF file, or a named model")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="linears that get the two rows")
    ap.add_argument("--layers", default="0-999", help="first-last layer (0-based) whose linears of --kinds get them")
    ap.add_argument("--attention", default="rows", choices=["rows", "one-row"], help="attention's layout")
    ap.add_argument("--head-rank", type=int, default=32, help="words the 8-bit head scores exactly (0: every word)")
    args = ap.parse_args()
    m = re.fullmatch(r"(\d+)-(\d+)", args.layers)
    if not m or int(m.group(1)) > int(m.group(2)):
        ap.error(f"--layers must be FIRST-LAST, got {args.layers!r}")
    first, last = int(m.group(1)), int(m.group(2))
    from pathlib import Path

    import heron.export.gguf_onnx as go
    from heron.paths import NAMED_LMS, named_lm_path

    linear = go.linear

    def selective(g, x, w, hint, compute, memo, packed=None):
        layer = re.match(r"blk\.(\d+)\.(\w+)$", hint)
        if compute == "int8x2" and layer and not (layer.group(2) in args.kinds
                                                  and first <= int(layer.group(1)) <= last):
            compute, memo = "int8", dict(memo, levels=go.offset_levels("int8"))
        return linear(g, x, w, hint, compute, memo, packed)

    go.linear = selective
    path = named_lm_path(args.gguf) if args.gguf in NAMED_LMS else Path(args.gguf)
    go.export_gguf_bundle(path, args.out, compute="int8x2", rank=args.head_rank, attention=args.attention,
                          pad_attention=args.attention != "one-row")
    print(f"{args.out}: int8x2 on {' '.join(args.kinds)} in layers {first}-{last}, int8 elsewhere; {args.attention}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
