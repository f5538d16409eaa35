"""How closely the folded Q4_1 offsets (heron.export.gguf_onnx.offset_blocks) carry the file's own, per level.

    .venv/bin/python scripts/probe_offset_levels.py --out runs/offset-levels.json     # writes only --out

For every Q4_1 matrix of a GGUF file (default: SmolLM2), the offsets m + 8 d of its blocks rebuilt from 1 and 2
levels of 4-bit blocks, against the file's: the error in units of each block's own step d (median, 99th
percentile, largest over all blocks), and the offsets' own size in those units.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--gguf", default="smollm2", help="a Llama GGUF file, or a named model")
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    args = ap.parse_args()
    import numpy as np

    from heron.export.gguf_onnx import BLOCK, offset_blocks, read_blocks
    from heron.models.lm.gguf_file import open_reader
    from heron.paths import NAMED_LMS, named_lm_path

    reader = open_reader(named_lm_path(args.gguf) if args.gguf in NAMED_LMS else Path(args.gguf))
    names = [n for n, t in reader.tensors.items() if t.type_name == "Q4_1"]
    if not names:
        raise SystemExit(f"{args.gguf}: no Q4_1 matrix")
    size, errors = [], {1: [], 2: []}
    for name in names:
        w = read_blocks(reader, name)
        nb, step = w.k // BLOCK, np.abs(w.scales).astype(np.float64) + 1e-30
        size.append((np.abs(w.offsets) / step).ravel())
        for levels in errors:
            e = offset_blocks(w, levels)
            q = np.stack([e.packed & 15, e.packed >> 4], -1).reshape(w.n, levels, -1).astype(np.float64) - 8
            scales = np.repeat(e.scales.reshape(w.n, levels, -1), BLOCK, -1)
            back = (q * scales).sum(1)[:, :nb]
            errors[levels].append((np.abs(back - w.offsets) / step).ravel())
    stats = lambda a: {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}  # noqa: E731
    report = {"gguf": args.gguf, "matrices": len(names), "blocks": int(sum(map(len, size))),
              "offset_over_step": stats(np.concatenate(size)),
              "error_over_step": {str(k): stats(np.concatenate(v)) for k, v in errors.items()}}
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
