"""A trained draft head (heron.models.lm.draft_head) -> a self-describing onnxruntime bundle: head.onnx and a
manifest naming the target it was trained for (the GGUF file's sha256) and the words it proposes among.

The head's output rows are the target's own Q8_0 embedding blocks (the words' rows of SmolLM2's tied table,
repacked, not quantized again; left out of head.onnx by default: the runtime takes them from the target); its
trained matrices go to 8-bit blocks of 32 (MatMulNBits, as the target's Q8_0 layers); both run on onnxruntime's
int8 kernel. The input embedding gathers the same int8 rows (one copy
in the file), and one learned row stands for every other word.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from heron.export.gguf_onnx import BLOCK, Blocks, Graph, read_blocks
from heron.runtime.draft_head import HEAD_FILE, DraftHeadManifest, write_head_manifest
from heron.runtime.manifest import file_table

OPSET, OPSET_MS = 18, 1


def q8_blocks(w: np.ndarray) -> Blocks:
    """(N, K) fp32 -> Q8_0-style blocks of 32 along K: d = absmax / 127, q = round(w / d) (+128 stored)."""
    n, k = w.shape
    b = w.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    d = np.abs(b).max(-1) / 127.0
    q = np.round(b / np.where(d > 0, d, 1.0)[..., None]).clip(-127, 127)
    return Blocks(n, k, 8, (q + 128).astype(np.uint8), d.astype(np.float32))


def _linear(g: Graph, x: str, w: Blocks, hint: str, packed: str | None = None, scales: str | None = None) -> str:
    ins = [packed or g.const(w.packed, hint + ".q"), scales or g.const(w.scales.reshape(-1), hint + ".scales")]
    return g.one("MatMulNBits", [x, *ins], domain="com.microsoft", K=w.k, N=w.n, bits=8, block_size=BLOCK,
                 accuracy_level=4, hint=hint)


def build_head_graph(model, rows: Blocks):
    """The torch DraftHead and the target's Q8_0 blocks of its words (N, D) -> (onnx.ModelProto, the names of
    the initializers that hold those rows: {"packed", "scales", "scales_flat"}).
    Inputs hidden (B, D) float32, token (B,) int64; outputs logits (B, N), feature (B, D)."""
    from onnx import TensorProto, helper

    cfg = model.cfg
    D, N = cfg.dim, cfg.n_words
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    g = Graph()
    c = lambda a, hint: g.const(np.asarray(a), hint)  # noqa: E731
    # input embedding: the words' int8 rows (the output layer's own initializer: one copy), and the learned
    # shared row for every other word
    table_q = c(rows.packed, "words.q")  # (N, D/32, 32) uint8
    row = g.one("Gather", [c(sd["row"].astype(np.int64), "row_of_word"), "token"])  # (B,): N = not a head word
    inside = g.one("Less", [row, c(np.int64(N), "n_words")])  # (B,)
    safe = g.one("Where", [inside, row, c(np.int64(0), "zero")])
    q = g.one("Sub", [g.one("Cast", [g.one("Gather", [table_q, safe])], to=TensorProto.FLOAT),
                      c(np.float32(128), "zp8")])  # (B, D/32, 32)
    scales = c(rows.scales, "words.scales_2d")  # (N, D/32)
    s = g.one("Unsqueeze", [g.one("Gather", [scales, safe]), c(np.array([-1], np.int64), "axes")])
    e = g.one("Reshape", [g.one("Mul", [q, s]), c(np.array([-1, D], np.int64), "shape")])  # (B, D)
    e = g.one("Where", [g.one("Unsqueeze", [inside, c(np.array([-1], np.int64), "axes")]), e, c(sd["oov"][None, :], "oov")])
    e = g.one("SimplifiedLayerNormalization", [e, c(sd["emb_norm.weight"], "emb_norm")], axis=-1,
              epsilon=cfg.norm_eps, stash_type=1)
    hidden = "hidden"
    if cfg.n_features:  # the target's middle-layer streams, normed and fused into its feature (zeros: no change)
        parts = g.op("Split", ["streams"], n_out=cfg.n_features, axis=-1, num_outputs=cfg.n_features)
        normed = [g.one("SimplifiedLayerNormalization", [x, c(sd[f"feature_norms.{i}.weight"], f"feature_norm{i}")],
                        axis=-1, epsilon=cfg.norm_eps, stash_type=1) for i, x in enumerate(parts)]
        cat = normed[0] if cfg.n_features == 1 else g.one("Concat", normed, axis=-1)
        hidden = g.one("Add", ["hidden", _linear(g, cat, q8_blocks(sd["fuse.weight"]), "fuse")])
    cat = g.one("Concat", [hidden, e], axis=-1)  # (B, 2D)
    f = g.one("Add", [hidden, _linear(g, cat, q8_blocks(sd["proj.weight"]), "proj")])
    for i in range(cfg.n_blocks):
        p = f"blocks.{i}."
        n = g.one("SimplifiedLayerNormalization", [f, c(sd[p + "norm.weight"], p + "norm")], axis=-1,
                  epsilon=cfg.norm_eps, stash_type=1)
        gate, up = _linear(g, n, q8_blocks(sd[p + "gate.weight"]), p + "gate"), _linear(g, n, q8_blocks(sd[p + "up.weight"]), p + "up")
        act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up])
        f = g.one("Add", [f, _linear(g, act, q8_blocks(sd[p + "down.weight"]), p + "down")])
    g.op("Identity", [f], outputs=["feature"])
    scales_flat = c(rows.scales.reshape(-1), "words.scales")
    logits = g.one("Add", [_linear(g, f, rows, "words", packed=table_q, scales=scales_flat), c(sd["bias"], "bias")])
    g.op("Identity", [logits], outputs=["logits"])
    f32 = TensorProto.FLOAT
    m = g.model(
        "heron_draft_head",
        [helper.make_tensor_value_info("hidden", f32, ["B", D]), helper.make_tensor_value_info("token", TensorProto.INT64, ["B"])]
        + ([helper.make_tensor_value_info("streams", f32, ["B", cfg.n_features * D])] if cfg.n_features else []),
        [helper.make_tensor_value_info("logits", f32, ["B", N]), helper.make_tensor_value_info("feature", f32, ["B", D])],
        {"": OPSET, "com.microsoft": OPSET_MS})
    m.ir_version = 10
    return m, {"packed": table_q, "scales": scales, "scales_flat": scales_flat}


def export_draft_head(model, gguf_path: str | Path, out: str | Path, *, name: str, training: dict | None = None,
                      rows_from_target: bool = True, stream_layers: tuple[int, ...] = ()) -> Path:
    """head.onnx + manifest.json (+ manifest.sha256) under `out`, for the target in `gguf_path`.
    rows_from_target: head.onnx leaves out its output rows (the target's own embedding blocks of its words, most
    of its bytes) and the runtime takes them from the target at load, checked against their sha256 recorded
    here; False stores them in head.onnx."""
    if len(stream_layers) != model.cfg.n_features:
        raise ValueError(f"the head fuses {model.cfg.n_features} streams of the target's middle layers: name their "
                         f"layers (stream_layers), got {list(stream_layers)}")
    import onnx
    from onnx import TensorProto

    from heron.models.lm.gguf_file import open_reader
    from heron.runtime.draft_head import ROWS_FROM, rows_sha256
    from heron.runtime.manifest import sha256_path

    reader = open_reader(gguf_path)
    table = read_blocks(reader, "token_embd.weight")
    if table.bits != 8 or "output.weight" in reader.tensors:
        raise ValueError(f"{gguf_path}: the draft head reads a tied Q8_0 embedding table (SmolLM2's layout)")
    words = model.words.cpu().numpy()
    rows = Blocks(len(words), table.k, 8, table.packed[words], table.scales[words])
    graph, row_names = build_head_graph(model, rows)
    rows_doc = {}
    if rows_from_target:
        for init in graph.graph.initializer:
            if init.name in row_names.values():  # left out: onnxruntime is handed the target's own at load
                nbytes = len(init.raw_data)
                init.ClearField("raw_data")
                init.data_location = TensorProto.EXTERNAL
                for key, value in (("location", "the-target"), ("offset", "0"), ("length", str(nbytes))):
                    entry = init.external_data.add()
                    entry.key, entry.value = key, value
        rows_doc = {"from": ROWS_FROM, **row_names, "sha256": rows_sha256(rows.packed, rows.scales)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("manifest.json", "manifest.sha256", HEAD_FILE):
        (out / stale).unlink(missing_ok=True)
    onnx.save_model(graph, str(out / HEAD_FILE))
    manifest = DraftHeadManifest(name=name, dim=model.cfg.dim, n_words=len(words), vocab_size=model.vocab_size,
                                 words=tuple(int(w) for w in words),
                                 target={"gguf": Path(gguf_path).name, "gguf_sha256": sha256_path(Path(gguf_path))},
                                 training=dict(training or {}), rows=rows_doc, stream_layers=tuple(stream_layers),
                                 files=file_table(out, {HEAD_FILE: HEAD_FILE}))
    write_head_manifest(out, manifest)
    return out
