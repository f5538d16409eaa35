"""heron.export.gguf_onnx: a Llama GGUF file -> one ONNX decode-step graph that runs the file's own
Q4_0 / Q4_1 / Q8_0 blocks (MatMulNBits). With fp32 compute (compute fp32) its logits equal the torch
model of the same file, dequantized, for a prompt and a cached continuation; SmolLM2's bundle loads
torch-free, chats, stops at its end-of-turn tokens and keeps fp32's greedy tokens."""
import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from heron.export.gguf_onnx import build_graph, dequantized, read_blocks  # noqa: E402
from heron.export.onnx_lm import state_names  # noqa: E402
from heron.runtime.gguf import GGUFFile  # noqa: E402
from conftest import write_tiny_llama  # noqa: E402


def _run(session, n_layers, blocks):
    ins, _ = state_names(n_layers)
    state = [np.zeros((1, 1, 0, 32), np.float32)] * len(ins)
    logits = []
    for b in blocks:  # a prompt, then cached continuations
        out = session.run(None, {"tokens": np.array([b], np.int64), "last": np.array([len(b)], np.int64),
                                 **dict(zip(ins, state))})
        logits.append(out[0][0])
        state = out[1:]
    return np.concatenate(logits), state


@pytest.mark.parametrize("types", [("Q4_1", "Q4_0"), ("Q8_0", "F32")])
def test_graph_equals_the_dequantized_model(tmp_path, types):
    from heron.models.lm.gguf_file import load_gguf

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), types)
    model, cfg, _, reader = build_graph(path, compute="fp32", shared_cache=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokens = [1, 5, 9, 33, 2, 60, 7, 7, 40, 3]
    ours, state = _run(session, cfg.n_layers, [tokens[:6], tokens[6:9], tokens[9:]])
    ref, _ = load_gguf(path)
    with torch.no_grad():
        theirs = ref(torch.tensor([tokens])).logits[0].numpy()
    assert ours.shape == theirs.shape == (10, 64)
    np.testing.assert_allclose(ours, theirs, atol=2e-4 * np.abs(theirs).max())
    assert state[0].shape == (1, 1, 10, 32)
    # int8 activations: close, not exact; their int8 remainder (int8x2) brings back most of the difference
    # (a CPU whose onnxruntime computes accuracy level 4 in fp32 has both errors near zero: still passes)
    err = {}
    for compute in ("int8", "int8x2"):
        fast, _, _, _ = build_graph(path, compute=compute, shared_cache=False, rank=0)  # the head on every word
        s4 = ort.InferenceSession(fast.SerializeToString(), providers=["CPUExecutionProvider"])
        approx, _ = _run(s4, cfg.n_layers, [tokens[:6], tokens[6:]])
        err[compute] = np.abs(approx - theirs).max()
    scale = np.abs(theirs).max()
    assert err["int8"] < 0.1 * scale and err["int8x2"] <= max(err["int8"] / 10, 1e-4 * scale)


def test_int8_split_reads_back_the_kernels_own_rounding():
    """split_int8 gives MatMulNBits [x, x - x_hi] with x_hi what the kernel's int8 rounding makes of x (per block of
    32, absmax / 127, read back through a 32 x 32 identity): x_hi within a thousandth of a step of that rounding,
    whatever the blocks' scales (one large, one all zeros); the second row, the remainder, within half a step."""
    from onnx import TensorProto, helper

    from heron.export.gguf_onnx import OPSET, OPSET_MS, Graph, split_int8

    K, T = 128, 3
    g = Graph()
    blocks = g.one("Reshape", ["x", g.const(np.array([0, 0, K // 32, 32], np.int64), "shape")])
    g.op("Identity", [split_int8(g, blocks, K)], outputs=["y"])
    model = g.model("split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, K])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {"": OPSET, "com.microsoft": OPSET_MS})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, T, K)).astype(np.float32)
    x[..., 32:64] *= 50
    x[..., 96:] = 0
    y = session.run(None, {"x": x})[0]
    assert y.shape == (2, T, K)
    np.testing.assert_array_equal(y[0], x[0])
    b = x[0].reshape(T, K // 32, 32).astype(np.float64)
    step = np.abs(b).max(-1, keepdims=True) / 127
    rounded = np.round(np.divide(b, step, out=np.zeros_like(b), where=step > 0)) * step
    hi = (x[0] - y[1]).reshape(T, K // 32, 32)
    if np.allclose(hi, b, rtol=1e-6, atol=0):  # this CPU's onnxruntime computes accuracy level 4 in fp32: nothing to split
        pytest.skip("MatMulNBits computes accuracy level 4 in fp32 here: x comes back unrounded (y = W x either way)")
    assert np.all(np.abs(hi - rounded) <= 1e-3 * np.maximum(step, 1e-30))
    assert np.all(hi[:, 3] == 0)
    assert np.all(np.abs(y[1].reshape(T, K // 32, 32)) <= 0.501 * step)  # the remainder: at most half a step


def test_building_the_graph_does_not_import_torch(tmp_path):
    """The onnxruntime path of a GGUF file (load_lm by name builds this graph at load) reads the file's config
    without torch (heron.models.lm.config): torch would cost the process ~190 MB and seconds."""
    import subprocess
    import sys

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), ("Q4_1", "Q8_0"))
    code = ("import sys; from heron.export.gguf_onnx import build_graph; "
            f"build_graph({str(path)!r}, compute='int8'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False"


def test_logits_of_the_last_positions_only(tmp_path):
    """`last` = n: the head runs on the block's last n positions; their logits are those of a full block,
    and the cache grows by the whole block (torch's forward takes the same argument)."""
    from heron.models.lm.gguf_file import load_gguf

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(2), ("Q4_1", "Q4_1"))
    model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ins, _ = state_names(cfg.n_layers)
    empty = dict(zip(ins, [np.zeros((1, 1, 0, 32), np.float32)] * len(ins)))
    tokens = np.array([[3, 1, 4, 1, 5, 9]], np.int64)
    full = session.run(None, {"tokens": tokens, "last": np.array([6], np.int64), **empty})
    for n in (1, 2, 9):
        part = session.run(None, {"tokens": tokens, "last": np.array([n], np.int64), **empty})
        np.testing.assert_allclose(part[0][0], full[0][0][-min(n, 6):], rtol=1e-5, atol=1e-5)
        assert part[1].shape == full[1].shape == (1, 1, 6, 32)
    ref, _ = load_gguf(path)
    with torch.no_grad():
        np.testing.assert_allclose(ref(torch.from_numpy(tokens), last=2).logits[0].numpy(), full[0][0][-2:], atol=1e-3)
        with pytest.raises(ValueError, match="last must be >= 1"):
            ref(torch.from_numpy(tokens), last=0)


def _backend(path, shared: bool):
    from heron.runtime.lm import OnnxLM, lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes

    model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=shared)
    graph = model.SerializeToString()
    manifest = lm_manifest(cfg, name="t", eot_id=None, source=None,
                           files={"model.int4.onnx": FileEntry("model.int4.onnx", sha256_bytes(graph), len(graph))})
    return OnnxLM.from_memory(graph, manifest)


@pytest.mark.skipif(not __import__("heron.runtime.sessions", fromlist=["MemoryFile"]).MemoryFile.supported(),
                    reason="needs Linux memfd_create and /proc/self/fd")
def test_a_graph_streamed_into_a_memory_file_computes_what_its_bytes_compute(tmp_path, monkeypatch):
    """Graph.sink: the initializers serialized as they are made, each as its own `graph` field (protobuf merges
    them), the model written after them; onnxruntime opens the file and computes the same bits, and
    OnnxLM.from_memory closes it once loaded. The manifest's entry is the file's sha256 and size."""
    import os

    from heron.export import gguf_onnx
    from heron.runtime.lm import OnnxLM, lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes
    from heron.runtime.sessions import MemoryFile

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(4), ("Q4_1", "Q8_0"))
    plain, cfg, _, _ = build_graph(path, compute="int8")
    graph = plain.SerializeToString()
    monkeypatch.setattr(gguf_onnx, "SINK_BYTES", 0)  # every initializer through the sink
    sink = MemoryFile()
    model, _, _, _ = build_graph(path, compute="int8", sink=sink)
    assert len(model.graph.initializer) == 0 and len(plain.graph.initializer) > 10
    sink.write(model.SerializeToString())
    with open(sink.path, "rb") as f:
        written = f.read()
    assert (sink.size, sink.sha256()) == (len(written), sha256_bytes(written)) and len(written) > len(graph) // 2
    manifest = lambda e: lm_manifest(cfg, name="t", eot_id=None, source=None, files={"model.int4.onnx": e})  # noqa
    a = OnnxLM.from_memory(graph, manifest(FileEntry("model.int4.onnx", sha256_bytes(graph), len(graph))))
    b = OnnxLM.from_memory(sink, manifest(FileEntry("model.int4.onnx", sink.sha256(), sink.size)))

    def open_memory_files() -> int:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own descriptor, gone by now
                pass
        return sum("memfd:heron-graph" in link for link in links)

    assert sink.fd == -1 and open_memory_files() == 0
    dropped = MemoryFile()
    dropped.write(b"never read")
    assert open_memory_files() == 1
    del dropped  # a memory file nobody loads is freed with it
    assert open_memory_files() == 0
    tokens = [1, 5, 9, 33, 2, 60, 7]
    np.testing.assert_array_equal(a.forward(tokens), b.forward(tokens))
    np.testing.assert_array_equal(a.forward([11]), b.forward([11]))


def test_shared_state_buffers_equal_grown_states(tmp_path, monkeypatch):
    """The shared-buffer graph (states extended in place through IO binding) gives the grown-state graph's
    logits through a prompt, single steps, a verified block, trims, snapshots and rewinds, and buffer
    growth past its first capacity (the valid prefix is carried over)."""
    from heron.runtime import lm as lm_mod

    monkeypatch.setattr(lm_mod._SharedCache, "STEP", 8)  # grow several times within the test
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(3), ("Q4_1", "Q8_0"))
    grown, shared = _backend(path, False), _backend(path, True)
    assert shared._shared and not grown._shared and not shared.branchable
    for b in (grown, shared):
        b.reset()
    script = [("f", [3, 1, 4, 1, 5], None), ("f", [9], 1), ("f", [2, 6, 5], None), ("t", 2), ("f", [7, 7], 2),
              ("s",), ("f", list(range(10, 22)), 3), ("r",), ("f", [8], 1), ("t", 0), ("f", [30, 31, 32, 33], 4)]
    marks = {}
    for step in script:
        for b in (grown, shared):
            if step[0] == "f":
                marks.setdefault(("out", id(b)), []).append(b.forward(step[1], last=step[2]))
                n = step[2] or len(step[1])  # the hidden states of exactly the positions whose logits came back
                rows = [b.hidden_at(p) for p in range(b.length - n - 1, b.length + 1)]
                assert rows[0] is None and rows[-1] is None and all(r is not None for r in rows[1:-1])
                marks.setdefault(("hid", id(b)), []).append(np.stack(rows[1:-1]))
            elif step[0] == "t":
                b.trim(step[1])
            elif step[0] == "s":
                marks[id(b)] = b.snapshot()
            else:
                b.restore(marks[id(b)])
        assert shared.length == grown.length
    for a, c in zip(marks[("out", id(grown))], marks[("out", id(shared))]):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
    for a, c in zip(marks[("hid", id(grown))], marks[("hid", id(shared))]):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
    last = shared.length - 1
    assert shared.hidden_at(last) is not None
    shared.trim(1)  # a trimmed position has no hidden state any more
    assert shared.hidden_at(last) is None and shared.hidden_at(last - 1) is not None
    assert shared._cache.capacity >= shared.length > 8
    with pytest.raises(ValueError, match="rewound"):
        shared.restore(shared.length + 1)
    shared.reset()
    shared.reserve(40)
    assert shared.length == 0 and shared._cache.capacity >= 40
    np.testing.assert_allclose(shared.forward([3, 1, 4, 1, 5]), marks[("out", id(grown))][0], rtol=1e-5, atol=1e-5)


def test_hidden_output_is_the_heads_input(tmp_path):
    """`hidden` is what the head reads: the tied Q8_0 table times it gives the graph's own logits, so a draft
    head trained on it sees the target's features."""
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(5), ("Q4_1", "Q8_0"))
    b = _backend(path, True)
    b.reset()
    logits = b.forward([3, 1, 4, 1, 5, 9], last=3)
    table = dequantized(read_blocks(GGUFFile(path), "token_embd.weight"))  # (V, D)
    hidden = np.stack([b.hidden_at(p) for p in (3, 4, 5)])  # (3, D)
    np.testing.assert_allclose(hidden @ table.T, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compute", ["int8", "int8x2"])
def test_ranked_head_scores_its_top_words_with_the_files_rows(tmp_path, compute):
    """A quantized graph's head: a 4-bit copy of the Q8_0 table ranks every word, and the `rank` best are scored
    again in fp32 with the file's own 8-bit rows (hidden . row, to fp32 rounding). The greedy word is the 8-bit
    head's own; the other words keep the copy's scores, near theirs; rank 0 scores every word with the head. By
    default int8 ranks 32 words and int8x2 none (HEAD_RANK)."""
    from heron.export.gguf_onnx import HEAD_RANK, head_rank, rank_blocks
    from heron.runtime.lm import HIDDEN_OUTPUT

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(7), ("Q4_1", "Q8_0"))
    reader = GGUFFile(path)
    table = dequantized(read_blocks(reader, "token_embd.weight")).astype(np.float64)  # (V, D): the tied head
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    runs = {}
    default, _, _, _ = build_graph(path, compute=compute, shared_cache=False)
    assert ("TopK" in [n.op_type for n in default.graph.node]) == (compute == "int8")
    for rank in (32, 16, 0):
        model, cfg, _, _ = build_graph(path, compute=compute, shared_cache=False, rank=rank)
        ops = [n.op_type for n in model.graph.node]
        assert ("TopK" in ops) == (rank != 0)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        ins, _ = state_names(cfg.n_layers)
        out = session.run(["logits", HIDDEN_OUTPUT], {
            "tokens": np.array([tokens], np.int64), "last": np.array([len(tokens)], np.int64),
            **dict(zip(ins, [np.zeros((1, 1, 0, 32), np.float32)] * len(ins)))})
        runs[rank] = (out[0][0], out[1][0] @ table.T, out[1][0])  # logits, the exact 8-bit head on its input, input
    assert head_rank(reader, cfg, compute) == HEAD_RANK.get(compute, 0) == (32 if compute == "int8" else 0)
    # not this CPU's kernels: the copy with fp32 activations (numpy) ranks the exact head's best 3 words within its
    # first 8 on every row, so 16 leaves room for any int8 kernel's rounding of the activations
    copy_scores = runs[0][2] @ dequantized(rank_blocks(read_blocks(reader, "token_embd.weight"))).T
    order = np.argsort(-copy_scores, -1)
    best3 = np.argsort(-runs[0][1], -1)[:, :3]
    assert max(int(np.flatnonzero(order[i] == j)[0]) for i in range(len(tokens)) for j in best3[i]) < 8
    for rank, k in ((32, 32), (16, 16)):
        logits, exact, _ = runs[rank]
        same = np.isclose(logits, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
        assert (same.sum(-1) >= k).all()  # the k ranked words (others may agree by chance)
        assert (logits.argmax(-1) == exact.argmax(-1)).all()
        top = np.argsort(-exact, -1)[:, :3]  # the exact head's best words are among the ranked ones
        assert np.take_along_axis(same, top, -1).all()
        tail = np.abs(logits - exact)[~same]  # the 4-bit copy's scores: near, not equal
        assert tail.size and tail.max() < 0.25 * np.abs(exact).max() and tail.mean() < 0.05 * np.abs(exact).max()
    full, exact, _ = runs[0]  # the head on every word: its int8 activations, not fp32
    assert np.abs(full - exact).max() < 0.1 * np.abs(exact).max()
    assert not np.allclose(runs[16][0], full, rtol=0, atol=1e-6)


def test_ranked_head_of_an_untied_file_scores_with_its_own_output_rows(tmp_path):
    """A GGUF with an output.weight of its own (Q8_0): the ranked head reads those rows, not the embedding's table
    (its 4-bit copy and its exact rescoring both), and its greedy word is that head's."""
    from heron.export.gguf_onnx import rank_blocks
    from heron.runtime.lm import HIDDEN_OUTPUT

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(9), ("Q4_1", "Q4_0"), untied=True)
    reader = GGUFFile(path)
    head = dequantized(read_blocks(reader, "output.weight")).astype(np.float64)
    table = dequantized(read_blocks(reader, "token_embd.weight")).astype(np.float64)
    assert not np.allclose(head, table)
    model, cfg, _, _ = build_graph(path, compute="int8", shared_cache=False, rank=16)
    assert not cfg.tie_embeddings and "TopK" in [n.op_type for n in model.graph.node]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ins, _ = state_names(cfg.n_layers)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    logits, hidden = session.run(["logits", HIDDEN_OUTPUT], {
        "tokens": np.array([tokens], np.int64), "last": np.array([len(tokens)], np.int64),
        **dict(zip(ins, [np.zeros((1, 1, 0, 32), np.float32)] * len(ins)))})
    exact = hidden[0] @ head.T
    # not this CPU's kernels: the head's copy with fp32 activations (numpy) ranks the exact best word within its first
    # 8 on every row, so 16 leaves room for any int8 kernel's rounding of the activations
    copy_scores = hidden[0] @ dequantized(rank_blocks(read_blocks(reader, "output.weight"))).T
    order = np.argsort(-copy_scores, -1)
    assert max(int(np.flatnonzero(order[i] == exact[i].argmax())[0]) for i in range(len(tokens))) < 8
    same = np.isclose(logits[0], exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    assert (same.sum(-1) >= 16).all() and (logits[0].argmax(-1) == exact.argmax(-1)).all()
    assert not np.isclose(logits[0], hidden[0] @ table.T, rtol=1e-3, atol=1e-3).all(-1).any()


def test_rank_blocks_round_like_q4_0_and_head_rank_is_checked(tmp_path, monkeypatch):
    """The ranking copy: each block's signed extreme maps to -8, every value within one step of its own; bad ranks
    are refused; fp32 compute, a non-Q8_0 head or a vocabulary no larger than the rank rank nothing."""
    from heron.export.gguf_onnx import head_rank, rank_blocks
    from heron.models.lm.gguf_file import config_from_gguf

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(8), ("Q4_1", "Q4_1"))
    reader = GGUFFile(path)
    w = read_blocks(reader, "token_embd.weight")
    r = rank_blocks(w)
    assert (r.bits, r.n, r.k, r.offsets) == (4, w.n, w.k, None)
    exact, rough = dequantized(w).reshape(w.n, -1, 32), dequantized(r).reshape(w.n, -1, 32)
    step = np.abs(r.scales)[..., None]
    assert (np.abs(rough - exact) <= step * 1.0001).all() and np.abs(rough - exact).mean() < 0.3 * step.mean()
    from heron.export import gguf_onnx
    monkeypatch.setattr(gguf_onnx, "RANK_CHUNK", 7)  # rounded in pieces (a short last one): the same blocks
    pieces = rank_blocks(w)
    np.testing.assert_array_equal(pieces.packed, r.packed), np.testing.assert_array_equal(pieces.scales, r.scales)
    cfg = config_from_gguf(reader)
    assert head_rank(reader, cfg, "fp32") == 0 and head_rank(reader, cfg, "int8", 5) == 5
    assert head_rank(reader, cfg, "int8", cfg.vocab_size) == 0
    for bad in (-1, 2.5, "8"):
        with pytest.raises(ValueError, match="head rank must be an integer >= 0"):
            head_rank(reader, cfg, "int8", bad)


def test_q4_1_offsets_fold_into_the_matmulnbits_call(tmp_path):
    """int8 compute carries Q4_1's block offsets as two extra 4-bit levels inside each MatMulNBits call (x's block
    sums join x as extra columns): the offsets come back within 1/64 of their largest per row group, the graph has
    no fp32 offsets MatMul left, and with fp32 arithmetic (compute fp32, offsets=2) its logits are the exact term's
    up to that rounding, nearer than one level's. int8x2 and fp32 keep the exact term; bad levels are refused."""
    from heron.export.gguf_onnx import offset_blocks, offset_levels

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(11), ("Q4_1", "Q4_1"))
    reader = GGUFFile(path)
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
        w = read_blocks(reader, name)
        nb = w.k // 32
        for levels in (1, 2):
            e = offset_blocks(w, levels)
            assert (e.bits, e.n, e.k, e.offsets) == (4, w.n, 32 * levels, None)
            q = np.stack([e.packed & 15, e.packed >> 4], -1).reshape(w.n, levels, 32).astype(np.float64) - 8
            back = (q * e.scales.reshape(w.n, levels, 1)).sum(1)
            assert (back[:, nb:] == 0).all()  # the padding columns carry nothing
            err = np.abs(back[:, :nb] - w.offsets).max(-1)
            bound = np.abs(w.offsets).max(-1) / (8 if levels == 1 else 64)
            assert (err <= bound * 1.0001 + 1e-12).all()
    assert (offset_levels("int8"), offset_levels("int8x2"), offset_levels("fp32"), offset_levels("int8", 0)) == (2, 0, 0, 0)
    for bad in (-1, 5, 1.5, True):
        with pytest.raises(ValueError, match="offset levels must be an integer in 0..4"):
            offset_levels("int8", bad)
    tokens = [1, 5, 9, 33, 2, 60, 7, 7, 40, 3]
    logits = {}
    for levels in (0, 1, 2):
        model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=False, offsets=levels)
        inits = {i.name for i in model.graph.initializer}
        assert any(".offsetsT" in n for n in inits) == (levels == 0)
        assert sum(n.startswith("block_sums") for n in inits) == (0 if levels == 0 else 2)  # one table per K, shared
        ks = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "K"}
        assert ks == ({64, 96} if levels == 0 else {64 + 32 * levels, 96 + 32 * levels, 64})  # the Q8_0 head keeps 64
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        logits[levels] = _run(session, cfg.n_layers, [tokens[:6], tokens[6:]])[0]
    scale = np.abs(logits[0]).max()
    err1, err2 = np.abs(logits[1] - logits[0]).max(), np.abs(logits[2] - logits[0]).max()
    assert err2 < 2e-3 * scale and err2 < err1 / 4
    int8, _, _, _ = build_graph(path, compute="int8", shared_cache=False)
    int8x2, _, _, _ = build_graph(path, compute="int8x2", shared_cache=False)
    assert not any(".offsetsT" in i.name for i in int8.graph.initializer)
    assert any(".offsetsT" in i.name for i in int8x2.graph.initializer)


def test_blocks_are_repacked_not_requantized(tmp_path):
    """Every stored block type dequantizes, through the MatMulNBits layout, to the file's own values."""
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(1), ("Q4_1", "Q4_0"))
    reader = GGUFFile(path)
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight"):
        b = read_blocks(reader, name)
        np.testing.assert_array_equal(dequantized(b), reader.tensor(name))
        assert b.bits in (4, 8) and b.packed.dtype == np.uint8


def test_mirror_with_kappa_0_drafts_with_in_place_states(tmp_path):
    """Mirror-SD with kappa 0 builds one branch at a time, so a draft whose state buffers are extended in place
    (rewound, never forked: no copy of the cache per step) serves: plain decoding's tokens, windows accepted (the
    draft is the target's own graph). Early-exit branches (kappa >= 1) still need states that fork."""
    from heron.runtime import decoding as sp
    from heron.runtime import mirror as ms

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(5), ("Q4_1", "Q8_0"))
    target, draft = _backend(path, True), _backend(path, True)
    assert not draft.branchable
    opts = sp.GenerationOptions(max_new_tokens=20, stop_at_eot=False)
    ref = [t.id for t in sp.plain(target, [3, 1, 4, 1, 5], opts)]
    st = sp.DecodeStats()
    fixed = sp.SpeculativeOptions("mirror", gamma=4, kappa=0, fixed_windows=True)
    got = [t.id for t in ms.mirror(target, draft, [3, 1, 4, 1, 5], opts, fixed, st)]
    # every round's next window is the branch built beside the target, but the last (it ends the generation)
    assert got == ref and max(st.accepted) == 4 and st.branch_hits >= 3 and st.branch_misses <= 1, st
    # windows as the draft writes them (the default at temperature 0) rewind the same in-place states
    st = sp.DecodeStats()
    got = [t.id for t in ms.mirror(target, draft, [3, 1, 4, 1, 5], opts, sp.SpeculativeOptions("mirror", gamma=4,
                                                                                                kappa=0), st)]
    assert got == ref and st.branch_hits >= 3, st
    with pytest.raises(ValueError, match=r"early-exit branches \(kappa 2\) need a draft that keeps independent"):
        list(ms.mirror(target, draft, [3, 1], opts, sp.SpeculativeOptions("mirror", kappa=2)))


def test_the_cli_exports_growing_states_for_a_mirror_draft(tmp_path, monkeypatch):
    """`heron lm export FILE.gguf --growing-states` asks for states that grow per call (what a Mirror-SD draft forks:
    such a graph is branchable, the in-place default is not: test_shared_state_buffers_equal_grown_states); a
    checkpoint refuses the option before writing anything."""
    from heron.cli import main
    from heron.export import gguf_onnx

    asked = []
    monkeypatch.setattr(gguf_onnx, "export_gguf_bundle",
                        lambda path, out, compute, shared_cache, rank, offsets: asked.append(shared_cache) or Path(out))
    monkeypatch.setattr("heron.cli_lm.print_files", lambda out: None, raising=False)
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), ("Q4_1", "Q8_0"))
    assert main(["lm", "export", str(path), "--growing-states", "--out", str(tmp_path / "grown")]) == 0
    assert main(["lm", "export", str(path), "--out", str(tmp_path / "shared")]) == 0
    assert asked == [False, True]
    assert main(["lm", "export", str(tmp_path), "--growing-states", "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()
    assert _backend(path, False).branchable and not _backend(path, True).branchable


@pytest.mark.parametrize("option, bad, values", [("--head-rank", "-2", ("0", "5")), ("--offset-levels", "5", ("0", "2"))])
def test_the_cli_passes_head_rank_and_offset_levels_to_the_export(tmp_path, monkeypatch, option, bad, values):
    """`heron lm export FILE.gguf --head-rank N` / `--offset-levels N` reach the export (None: HEAD_RANK's /
    OFFSET_LEVELS' default; 0: the 8-bit head scores every word / Q4_1's offsets as the exact fp32 term); a bad value
    or a checkpoint refuses the option with one line before writing anything."""
    from heron.cli import main
    from heron.export import gguf_onnx

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), ("Q4_1", "Q8_0"))
    with pytest.raises(SystemExit):  # a usage error: one line, exit status 2
        main(["lm", "export", str(path), option, bad, "--out", str(tmp_path / "bad")])
    assert main(["lm", "export", str(tmp_path), option, "1", "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()
    asked = []
    key = "rank" if option == "--head-rank" else "offsets"
    monkeypatch.setattr(gguf_onnx, "export_gguf_bundle", lambda path, out, **kw: asked.append(kw[key]) or Path(out))
    monkeypatch.setattr("heron.cli_lm.print_files", lambda out: None, raising=False)
    for args in ([], [option, values[0]], [option, values[1]]):
        assert main(["lm", "export", str(path), "--compute", "int8", *args, "--out", str(tmp_path / "b")]) == 0
    assert asked == [None, *map(int, values)]


def test_bad_compute_is_refused(tmp_path):
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), ("Q4_1", "Q4_1"))
    with pytest.raises(ValueError, match="compute must be one of fp32, int8, int8x2"):
        build_graph(path, compute="int4")


def test_int8_weights_are_refused_for_a_gguf_file_on_the_onnx_engine(tmp_path):
    """The graph runs the file's own 4-bit blocks: weights='int8' would be ignored, so it is refused before the
    graph is built."""
    import heron

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), ("Q4_1", "Q4_1"))
    with pytest.raises(ValueError, match="weights='int8' does not apply to a GGUF file on the onnx engine"):
        heron.load_lm(path, engine="onnx", weights="int8")


def _smol(tmp_path_factory, compute):
    from heron.paths import named_lm_path

    try:
        path = named_lm_path("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from heron.export.gguf_onnx import export_gguf_bundle

    out = tmp_path_factory.mktemp("smol") / "bundle"
    return export_gguf_bundle(path, out, compute=compute), path


@pytest.fixture(scope="module")
def smol_bundle(tmp_path_factory):
    return _smol(tmp_path_factory, "int8x2")


def test_smollm2_bundle_chats_torch_free_and_keeps_its_end_tokens(smol_bundle):
    import heron

    folder, _ = smol_bundle
    m = json.loads((folder / "manifest.json").read_text())
    assert m["default_weights"] == "int4" and set(m["files"]) == {"model.int4.onnx", "tokenizer.json"}
    assert m["source"]["feature_layers"] == [2, 14]  # the streams a draft head may fuse (default_feature_layers)
    assert m["source"]["head_rank"] == 0  # int8x2: the Q8_0 head on every word (HEAD_RANK; int8 ranks)
    assert m["source"]["offset_levels"] == 0  # int8x2: Q4_1's offsets as the exact fp32 term (OFFSET_LEVELS; int8 folds)
    lm = heron.load_lm(folder)
    assert type(lm.backend).__name__ == "OnnxLM" and lm.backend.weights == "int4"
    ends = {lm.tokenizer._tok.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert ends <= lm.end_ids
    text = "".join(t.text for t in lm.chat([{"role": "user", "content": "Write a Python function that reverses a "
                                                                        "string."}],
                                            heron.GenerationOptions(max_new_tokens=40)))
    assert "def " in text
    with pytest.raises(ValueError, match="lists no model.onnx .this bundle has int4"):
        heron.load_lm(folder, weights="fp32")
    # what verifying a draft token costs this graph (prompt lookup sizes its windows with it), by its compute
    from heron.runtime.lm import VERIFY_COSTS
    assert m["source"]["compute"] == "int8x2" and lm.backend.verify_cost == VERIFY_COSTS[("int8x2", 1)] < 0.5


def test_smollm2_weights_in_huge_pages_compute_the_same_logits(smol_bundle, monkeypatch):
    """load_lm's huge_pages reaches the session's load (heron.runtime.pages, tested there: the memory the load added,
    collapsed into huge pages where the system allows), and the graph computes the same bits either way."""
    import heron
    from heron.runtime import pages

    asked = []

    class Recorded(pages.HugePages):
        def __init__(self, enabled: bool = True):
            super().__init__(enabled)
            asked.append(enabled)

    monkeypatch.setattr(pages, "HugePages", Recorded)
    folder, _ = smol_bundle
    big, small = heron.load_lm(folder), heron.load_lm(folder, huge_pages=False)
    assert asked == [True, False] and small.backend.huge_pages_bytes == 0
    ids = big.encode("Huge pages hold the same weights.")
    np.testing.assert_array_equal(big.backend.forward(ids), small.backend.forward(ids))
    with pytest.raises(ValueError, match="huge_pages must be True or False"):
        heron.load_lm(folder, huge_pages="yes")


def test_smollm2_int4_keeps_fp32_greedy_tokens(tmp_path_factory):
    """The GGUF's blocks, not new ones: with fp32 compute (compute fp32) greedy decoding equals the
    dequantized torch model's for 24 tokens (the int8 kernels need not)."""
    import heron

    folder, path = _smol(tmp_path_factory, "fp32")
    onnx_lm, torch_lm = heron.load_lm(folder), heron.load_lm(path)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    opts = heron.GenerationOptions(max_new_tokens=24)
    assert [t.id for t in onnx_lm.chat(msgs, opts)] == [t.id for t in torch_lm.chat(msgs, opts)]
