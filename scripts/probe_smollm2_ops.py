"""Where one call of heron's SmolLM2 graph spends its time, per operator type (onnxruntime's own profiler): a
one-token step and a T-token verify block after the same cached context, side by side, and ORT GenAI's int4 model
for the step when it is built (scripts/peers/genai_peers.sh).

    .venv/bin/python scripts/probe_smollm2_ops.py --bundles runs/smol-i8r --out runs/ops-probe.json [--rows 1 5]

Each bundle is a folder of `heron lm export smollm2`; its graph runs with 1 onnxruntime thread on random states of
--context cached positions (random keys and values: the cost does not depend on them), 20 warm-up calls, then 100
profiled calls per row count. Per operator type: microseconds per call and nodes; the wall time per call with the
profiler on (it adds a little per node). The profiler's own file goes to a temporary folder, removed after; only
--out is written.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smollm2 import GENAI_MODEL  # noqa: E402

WARMUP, CALLS = 20, 100


def profile(model: Path, feeds: dict, outputs: list[str]) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "p")
        s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP):
            s.run(outputs, feeds)
        t0 = time.perf_counter()
        for _ in range(CALLS):
            s.run(outputs, feeds)
        wall = (time.perf_counter() - t0) / CALLS
        events = json.loads(Path(s.end_profiling()).read_text())
    total, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    runs = WARMUP + CALLS  # the profiler records the warm-up calls too
    return {"wall_ms_per_call": round(wall * 1e3, 2),
            "ops_us_per_call": {op: round(d / runs) for op, d in total.most_common()},
            "nodes": {op: nodes[op] // runs for op in total}, "node_ms_per_call": round(sum(total.values()) / runs / 1e3, 2)}


def heron_feeds(folder: Path, rows: int, context: int, rng) -> tuple[Path, dict, list[str]]:
    import onnx

    model = folder / "model.int4.onnx"
    graph = onnx.load(str(model), load_external_data=False).graph
    feeds = {"tokens": rng.integers(100, 20000, (1, rows)).astype(np.int64), "last": np.array([rows], np.int64)}
    for i in graph.input:
        if i.name.startswith("cached_"):  # (1, G, P, S): a buffer with room for the call (and attention's copy row)
            _, g, _, s = (d.dim_value for d in i.type.tensor_type.shape.dim)
            feeds[i.name] = (rng.standard_normal((1, g, context + rows + 8, s)) * 0.1).astype(np.float32)
        elif i.name == "past_length":
            feeds[i.name] = np.array([context], np.int64)
    return model, feeds, ["logits"]


def genai_feeds(rows: int, context: int, rng) -> tuple[Path, dict, list[str]]:
    cfg = json.loads((GENAI_MODEL / "genai_config.json").read_text())["model"]["decoder"]
    feeds = {"input_ids": rng.integers(100, 20000, (1, rows)).astype(np.int64),
             "attention_mask": np.ones((1, context + rows), np.int64)}
    for i in range(cfg["num_hidden_layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = (rng.standard_normal(
                (1, cfg["num_key_value_heads"], context, cfg["head_size"])) * 0.1).astype(np.float32)
    return GENAI_MODEL / "model.onnx", feeds, ["logits"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="+", required=True, help="folders of heron lm export smollm2")
    ap.add_argument("--out", required=True, help="JSON file for the figures")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 5], help="tokens per call")
    ap.add_argument("--context", type=int, default=300, help="cached positions before the call")
    a = ap.parse_args()
    result = {"context": a.context, "calls": CALLS, "graphs": {}}
    for folder in a.bundles:
        for rows in a.rows:
            model, feeds, outs = heron_feeds(Path(folder), rows, a.context, np.random.default_rng(0))
            result["graphs"][f"{folder} T={rows}"] = r = profile(model, feeds, outs)
            print(folder, f"T={rows}", r["wall_ms_per_call"], "ms;", dict(list(r["ops_us_per_call"].items())[:6]), flush=True)
    if (GENAI_MODEL / "model.onnx").is_file():
        model, feeds, outs = genai_feeds(1, a.context, np.random.default_rng(0))
        result["graphs"]["ort-genai T=1"] = r = profile(model, feeds, outs)
        print("ort-genai T=1", r["wall_ms_per_call"], "ms;", dict(list(r["ops_us_per_call"].items())[:6]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
