"""Train a draft head on SmolLM2's own features (heron.models.lm.draft_head) and export its bundle.

    .venv/bin/python scripts/draft_head_data.py --out runs/draft-head-data           # SmolLM2's answers
    .venv/bin/python scripts/train_draft_head.py --data runs/draft-head-data --out runs/draft-head

    .venv/bin/python scripts/train_draft_head.py --data runs/draft-head-data runs/head-data-b --out runs/draft-head-more
    .venv/bin/python scripts/train_draft_head.py --data runs/draft-head-data --files 'q*.npz' --out - --evaluate DIR
    HERON_WRITE_PACKAGE=1 .venv/bin/python scripts/train_draft_head.py --export DIR --out runtime/assets/draft-head-smollm2

Writes the torch weights (draft_head.safetensors, config.json) under --out/torch and the onnxruntime bundle
(head.onnx, manifest.json) under --out; the held-out agreement with SmolLM2's own next words goes into the
manifest's `training` record with this command. --export DIR writes the bundle of a head trained before (DIR/torch)
under --out, with DIR's training record: how the shipped head (runtime/assets/draft-head-smollm2) is made, then
scripts/pin_bundles.py pins its identity.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time


def _stream_layers(gguf) -> tuple[int, ...]:
    """The middle layers whose streams heron's graphs of this GGUF file return (what --features records)."""
    from heron.export.gguf_onnx import default_feature_layers
    from heron.models.lm.gguf_file import config_from_gguf, open_reader

    return default_feature_layers(config_from_gguf(open_reader(gguf)).n_layers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=None,
                    help="folders of scripts/draft_head_data.py or draft_head_data_batched.py (required unless --export)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", default="*.npz", help="which answers of --data (p*.npz: prompt set 1, q*.npz: set 2)")
    ap.add_argument("--words", type=int, default=8192, help="N: the words the head proposes among")
    ap.add_argument("--blocks", type=int, default=1, help="SwiGLU blocks")
    ap.add_argument("--streams", action="store_true",
                    help="also fuse the target's middle-layer streams the answers were recorded with "
                         "(draft_head_data.py --features: the layers heron's SmolLM2 graphs return, "
                         "heron.export.gguf_onnx.default_feature_layers)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, metavar="DIR",
                    help="go on from the head trained in DIR (DIR/torch; its blocks and words are kept): its training "
                         "answers may fall in this run's held-out split, so that figure flatters it")
    ap.add_argument("--evaluate", default=None, metavar="DIR",
                    help="only measure a trained head (DIR from an earlier run) on every answer of --data / --files")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="only export the head trained in DIR (DIR/torch) as a bundle under --out")
    a = ap.parse_args()
    from pathlib import Path

    from heron.export.draft_head import export_draft_head
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.models.lm import draft_head as dh
    from heron.models.lm.gguf_file import open_reader
    from heron.paths import named_lm_path

    t0 = time.time()
    gguf = named_lm_path("smollm2")
    if a.export:
        from heron.paths import check_out

        check_out(a)  # not inside heron's shipped models unless HERON_WRITE_PACKAGE=1 (the shipping command)
        meta = json.loads((Path(a.export) / "torch" / "config.json").read_text())
        model = dh.load(Path(a.export) / "torch")
        training = {k: meta[k] for k in ("report", "command", "train_seconds") if k in meta}
        export_draft_head(model, gguf, a.out, name=f"smollm2-draft-head-{model.cfg.n_words}", training=training,
                          stream_layers=_stream_layers(gguf) if model.cfg.n_features else ())
        print(f"exported {a.export} -> {a.out}")
        return 0
    if not a.data:
        ap.error("--data is required (or --export DIR)")
    table = dequantized(read_blocks(open_reader(gguf), "token_embd.weight"))  # (V, D): the target's own rows
    head = dh.load(Path(a.evaluate) / "torch") if a.evaluate else None
    data = dh.load_data(a.data, a.files, streams=a.streams or bool(head and head.cfg.n_features))
    if a.evaluate:
        import numpy as np
        report = dh.agreement(head, data, np.arange(len(data.x)))
        print(json.dumps({"head": a.evaluate, "files": a.files, "positions": len(data.x), **report}))
        return 0
    print(f"{len(data.x)} positions from {len(set(data.answer.tolist()))} answers ({time.time() - t0:.0f} s)", flush=True)
    n_features = data.streams.shape[1] // table.shape[1] if a.streams else 0
    if a.streams and not n_features:
        ap.error(f"--streams: the answers in {' '.join(a.data)} were recorded without --features")
    cfg = dh.DraftHeadConfig(dim=table.shape[1], n_blocks=a.blocks, n_words=a.words, n_features=n_features)
    opts = dh.TrainOptions(steps=a.steps, batch=a.batch, lr=a.lr, threads=a.threads, seed=a.seed)
    init = dh.load(Path(a.init) / "torch") if a.init else None
    if init is not None and (init.cfg.n_features != n_features):
        ap.error(f"--init {a.init}: its head fuses {init.cfg.n_features} streams, this run {n_features}")
    model, report = dh.train(data, table, cfg, opts, log=lambda s: print(s, flush=True), init=init)
    if init is not None:
        report["init"] = a.init
    command = "scripts/train_draft_head.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    meta = {"report": report, "command": command, "train_seconds": round(time.time() - t0)}
    dh.save(model, Path(a.out) / "torch", meta)
    export_draft_head(model, gguf, a.out, name=f"smollm2-draft-head-{a.words}", training=meta,
                      stream_layers=_stream_layers(gguf) if n_features else ())
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
