"""One computation for single steps and verify blocks: onnxruntime's GroupQueryAttention rounds a one-token call
differently from a block, so a GGUF graph with shared state buffers runs a token's query heads that share a key
head as rows of one head (rows attention, heron.export.gguf_onnx; no one-row call ever), or pads attention to two
query rows (padded, ATTENTION_ROWS), and runs one-token calls as one row where the load check finds them exact on
this CPU (OnnxLM.one_row_exact); an int8 graph with attention's one-row path pads one-token calls with a scratch
token (runtime.lm MIN_ROWS). Either way a plain step computes bit for bit what a verify block computes, and
speculation returns plain decoding's tokens exactly; the padded and spilled positions never show (length, hidden
states)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("gguf")

from conftest import write_tiny_llama  # noqa: E402
from heron.runtime import decoding as sp  # noqa: E402


LAYOUTS = ("rows", "padded", "one-row")


def _bundle(path, compute, attention="padded"):
    """(graph bytes, manifest) of the tiny GGUF file, as heron.export.gguf_onnx.bundle_in_memory makes them."""
    from heron.export.gguf_onnx import attention_rows, attention_spill, build_graph
    from heron.runtime.lm import lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes, sha256_path

    model, cfg, _, _ = build_graph(path, compute=compute, attention=attention)
    graph = model.SerializeToString()
    heads = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
    manifest = lm_manifest(cfg, name="t", eot_id=None, files={"model.int4.onnx": FileEntry(
        "model.int4.onnx", sha256_bytes(graph), len(graph))},
        source={"gguf": path.name, "gguf_sha256": sha256_path(path), "compute": compute,
                "attention_rows": attention_rows(compute, attention=attention),
                "attention_spill": attention_spill(attention, heads)})
    return graph, manifest


def _lm(path, compute, min_rows=None, attention="padded", exact_steps=True):
    from heron.runtime.lm import OnnxLM

    return OnnxLM.from_memory(*_bundle(path, compute, attention), min_rows=min_rows, exact_steps=exact_steps)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("rows") / "t.gguf", np.random.default_rng(5), ("Q4_1", "Q4_1"))


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
NEXT = [5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]


def _steps(lm, prompt, nxt):
    lm.reset()
    first = lm.forward(prompt, last=1)[0]
    out, hid = [first], [lm.hidden_at(len(prompt) - 1)]
    for t in nxt:
        out.append(lm.forward([t], last=1)[0])
        hid.append(lm.hidden_at(lm.length - 1))
    return np.stack(out), np.stack(hid)


def _blocks(lm, prompt, nxt, T):
    lm.reset()
    rows = [lm.forward(prompt, last=1)[0]]
    hid = [lm.hidden_at(len(prompt) - 1)]
    for i in range(0, len(nxt), T):
        block = nxt[i:i + T]
        rows.extend(lm.forward(block, last=len(block)))
        hid.extend(lm.hidden_at(lm.length - len(block) + j) for j in range(len(block)))
    return np.stack(rows), np.stack(hid)


@pytest.mark.parametrize("compute", ["int8", "int8x2"])
@pytest.mark.parametrize("attention", LAYOUTS)
def test_steps_compute_what_blocks_compute(gguf, compute, attention):
    """Whatever rows the runtime chose for a graph on this CPU (one row where the graph runs attention as rows or
    pads it and its one-row calls are exact here; else int8's scratch token), the logits and hidden states of
    single steps equal those of blocks of 2, 3 and 5 and of a prefill that carries a window, bit for bit (int8x2 on
    attention's one-row path: close, its documented rounding); the cache holds exactly the tokens fed."""
    lm = _lm(gguf, compute, attention=attention)
    assert lm.attention_rows == (2 if attention == "padded" else 1)
    assert lm.spill == (1 if attention == "rows" else 0)  # the tiny model: 2 query heads per key head
    if attention != "one-row":
        assert lm.min_rows == (1 if lm.one_row_exact() else {"int8": 2, "int8x2": 1}[compute])
    else:
        assert lm.min_rows == {"int8": 2, "int8x2": 1}[compute]
    assert lm.free_draft_tokens == lm.min_rows - 1
    exact = lm.min_rows == 2 or lm.one_row_exact()  # int8x2 on the one-row path: as this CPU's kernels round
    assert exact or attention == "one-row" or compute == "int8x2"
    steps, hidden = _steps(lm, PROMPT, NEXT)
    assert lm.length == len(PROMPT) + len(NEXT)
    for T in (2, 3, 5):
        rows, hid = _blocks(lm, PROMPT, NEXT, T)
        if exact:
            assert np.array_equal(rows, steps), T
            assert np.array_equal(hid, hidden), T
        else:
            assert np.corrcoef(rows.ravel(), steps.ravel())[0, 1] > 0.99
    lm.reset()
    both = lm.forward(PROMPT + NEXT[:3], last=4)  # the first round of a speculative run: prefill and a window
    if exact:
        assert np.array_equal(both, steps[:4])


def test_the_load_check_says_what_steps_do(gguf):
    """one_row_exact (run at load) agrees with a longer comparison of one-row steps and blocks, on graphs with and
    without padded attention; on the padded int8 graph the one-row calls (where chosen) and the scratch-token calls
    give the same tokens' logits: the choice changes the cost, never the answer."""
    for compute in ("int8", "int8x2"):
        for attention in LAYOUTS:
            lm = _lm(gguf, compute, min_rows=1, attention=attention)
            steps, _ = _steps(lm, PROMPT, NEXT)
            blocks, _ = _blocks(lm, PROMPT, NEXT, 3)
            assert lm.length == len(PROMPT) + len(NEXT)
            assert lm.one_row_exact() == np.array_equal(steps, blocks), (compute, attention)
            assert lm.length == 0 and lm.min_rows == 1  # the check leaves an empty cache and the rows as they were
    one = _lm(gguf, "int8", min_rows=1)
    if one.one_row_exact():
        padded = _lm(gguf, "int8", min_rows=2)
        assert np.array_equal(_steps(one, PROMPT, NEXT)[0], _steps(padded, PROMPT, NEXT)[0])
    # the one-row call without padded attention: the same model, rounding of its own (close)
    plain_rows, _ = _steps(_lm(gguf, "int8", min_rows=1, attention="one-row"), PROMPT, NEXT)
    assert np.corrcoef(plain_rows.ravel(), _steps(one, PROMPT, NEXT)[0].ravel())[0, 1] > 0.99


def test_a_manifest_cannot_claim_padding_its_graph_lacks(gguf):
    """A manifest that says attention is padded on a graph that does not pad it: the load check decides (where
    one-row steps are inexact on this CPU, int8 keeps its scratch token) and steps still equal blocks; a value
    other than 1 or 2 is refused."""
    from heron.export.gguf_onnx import build_graph
    from heron.runtime.bundle import BundleError
    from heron.runtime.lm import OnnxLM, lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes, sha256_path

    model, cfg, _, _ = build_graph(gguf, compute="int8", attention="one-row")
    graph = model.SerializeToString()

    def load(rows):
        manifest = lm_manifest(cfg, name="t", eot_id=None, files={"model.int4.onnx": FileEntry(
            "model.int4.onnx", sha256_bytes(graph), len(graph))},
            source={"gguf": gguf.name, "gguf_sha256": sha256_path(gguf), "compute": "int8", "attention_rows": rows})
        return OnnxLM.from_memory(graph, manifest)

    lm = load(2)
    assert lm.min_rows == (1 if lm.one_row_exact() else 2)
    steps, _ = _steps(lm, PROMPT, NEXT)
    assert np.array_equal(_blocks(lm, PROMPT, NEXT, 3)[0], steps)
    for bad in (0, 3, True, "2", 1.5):
        with pytest.raises(BundleError, match="attention_rows must be 1 or 2"):
            load(bad)
    # the other way round: a graph that pads (its attention_rows input) under a manifest that says it does not
    padded = build_graph(gguf, compute="int8", attention="padded")[0].SerializeToString()
    manifest = lm_manifest(cfg, name="t", eot_id=None, files={"model.int4.onnx": FileEntry(
        "model.int4.onnx", sha256_bytes(padded), len(padded))},
        source={"gguf": gguf.name, "gguf_sha256": sha256_path(gguf), "compute": "int8", "attention_rows": 1})
    with pytest.raises(BundleError, match="the graph takes attention_rows .it pads attention to two query rows"):
        OnnxLM.from_memory(padded, manifest)


def test_fp32_uses_one_row(gguf):
    """fp32's kernels differ across row counts themselves: its graph pads nothing and runs one-token calls as
    they are; verify costs follow the rows chosen."""
    lm = _lm(gguf, "fp32")
    assert lm.attention_rows == 1 and lm.min_rows == 1 and lm.free_draft_tokens == 0
    from heron.runtime.lm import VERIFY_COSTS
    for attention in LAYOUTS:
        int8 = _lm(gguf, "int8", attention=attention)
        assert int8.verify_cost == VERIFY_COSTS[("int8", int8.min_rows)]
    assert VERIFY_COSTS[("int8", 2)] < VERIFY_COSTS[("int8", 1)]


@pytest.mark.parametrize("attention", LAYOUTS)
def test_the_last_position_of_the_context(gguf, attention):
    """The context's last position decodes on every graph (the padded attention row, rows attention's spill and the
    scratch token have room there, or the call runs one row); nothing is left in the cache past its end."""
    lm = _lm(gguf, "int8", attention=attention)
    for min_rows in (1, 2):
        lm.min_rows = min_rows
        lm.reset()
        lm.forward(list(np.arange(lm.max_len - 1) % 64), last=1)
        out = lm.forward([7], last=1)
        assert out.shape == (1, 64) and np.isfinite(out).all() and lm.length == lm.max_len
        with pytest.raises(ValueError, match="exceed the context"):
            lm.forward([7])


@pytest.mark.parametrize("bad", [0, 3, -1, True, 1.5, "2", None])
def test_min_rows_refuses_bad_values(gguf, bad):
    lm = _lm(gguf, "int8", attention="one-row")
    with pytest.raises(ValueError, match="min_rows must be 1 or 2"):
        lm.min_rows = bad
    assert lm.min_rows == 2


@pytest.mark.parametrize("attention", LAYOUTS)
def test_speculation_on_int8_returns_plain_decodings_tokens(gguf, attention):
    """Greedy prompt lookup (adaptive and fixed windows) on the int8 graph (rows attention, padded attention, or the
    scratch token): plain decoding's tokens, with windows verified (not a plain run in disguise)."""
    lm = _lm(gguf, "int8", attention=attention)
    opts = sp.GenerationOptions(max_new_tokens=40, temperature=0.0, stop_at_eot=False)
    verified = 0
    for prompt in ([3, 1, 4, 1, 5, 3, 1, 4, 1, 5, 3, 1], [7, 7, 7, 7, 7, 7], [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]):
        want = [t.id for t in sp.plain(lm, prompt, opts)]
        for adaptive in (True, False):
            stats = sp.DecodeStats()
            got = [t.id for t in sp.lookup(lm, prompt, opts, sp.SpeculativeOptions(method="lookup", gamma=3,
                                                                                  adaptive=adaptive), stats)]
            assert got == want, (prompt, adaptive)
            verified += sum(stats.windows)
    assert verified > 10


def test_windows_count_the_free_draft_token():
    """A draft token that rides in a call of two rows anyway is always worth proposing; past it the window is
    priced as before; a drafter's own cost per token counts too."""
    assert sp.best_window(4, 0.05, cost=0.5) == 0
    assert sp.best_window(4, 0.05, cost=0.5, free=1) == 1
    assert sp.best_window(4, 0.05, cost=0.5, free=1, draft=0.1) == 0  # proposing costs more than it returns
    assert sp.best_window(6, 0.95, cost=0.16, free=1) == 6  # a copy-heavy answer keeps long windows

    class Padded:
        free_draft_tokens = 1

    assert sp.free_draft_tokens(Padded()) == 1 and sp.free_draft_tokens(object()) == 0
    for bad in (-1, 9, True, 1.0, "1"):
        Padded.free_draft_tokens = bad
        assert sp.free_draft_tokens(Padded()) == 0
    seq = [1, 2, 3, 9, 8, 1, 2, 3]
    d = sp.LookupDrafter(64, cost=10.0, free=1)
    assert d.propose(seq, 5)[0] == [9]  # verification past the free token is priced out


def _spare(lm):
    """The first key buffer's position just past the cache (where a padded one-token call writes its copy row)."""
    return lm._cache.arrays[0][0, :, lm.length].copy()


@pytest.mark.parametrize("compute", ["int8", "int8x2"])
def test_one_row_steps_on_request(gguf, compute):
    """exact_steps=False (heron lm generate --fast-steps): a one-token call gives attention its own row only (the
    graph's attention_rows input fed 1: no copy row is written past the cache, as the exact steps' is), min_rows 1,
    the same model up to rounding (close logits); turned back on, steps compute what blocks compute bit for bit again."""
    from heron.runtime.lm import ROWS_INPUT

    exact = _lm(gguf, compute)
    assert ROWS_INPUT in {i.name for i in exact.session.get_inputs()} and exact.exact_steps
    exact.reset()
    exact.forward(PROMPT, last=1)
    exact.forward([NEXT[0]], last=1)
    assert np.abs(_spare(exact)).max() > 0  # the padded row's key, one position past the call
    ref, _ = _steps(exact, PROMPT, NEXT)

    fast = _lm(gguf, compute, exact_steps=False)
    assert not fast.exact_steps and fast.min_rows == 1 and fast.free_draft_tokens == 0
    fast.reset()
    fast.forward(PROMPT, last=1)
    fast.forward([NEXT[0]], last=1)
    assert not np.any(_spare(fast))  # one row: nothing written past the call (the fresh buffer's zeros)
    steps, _ = _steps(fast, PROMPT, NEXT)
    assert fast.length == len(PROMPT) + len(NEXT)
    assert np.corrcoef(steps.ravel(), ref.ravel())[0, 1] > 0.99  # (not the argmax: a near-tie may turn on any CPU)
    fast.exact_steps = True  # back to exact steps: the load check decides the rows, blocks equal steps again
    assert fast.exact_steps and fast.min_rows == exact.min_rows
    back, _ = _steps(fast, PROMPT, NEXT)
    assert np.array_equal(back, ref)
    assert np.array_equal(_blocks(fast, PROMPT, NEXT, 3)[0], ref)


@pytest.mark.parametrize("bad", [0, 1, "no", None, 1.0])
def test_exact_steps_refuses_non_booleans(gguf, bad):
    with pytest.raises(ValueError, match="exact_steps must be True or False"):
        _lm(gguf, "int8", exact_steps=bad)
    lm = _lm(gguf, "int8")
    with pytest.raises(ValueError, match="exact_steps must be True or False"):
        lm.exact_steps = bad
    assert lm.exact_steps


def test_speculation_refuses_one_row_steps_and_drafts_use_them(gguf, monkeypatch):
    """A target with one-row steps decodes plainly and refuses speculative methods (their tokens would not be plain
    decoding's exactly); a GGUF target's own draft runs one-row steps (a draft's steps need not equal its blocks);
    exact_steps=False is refused where it means nothing (a torch target)."""
    import heron
    from heron.lm import LanguageModel

    opts = heron.GenerationOptions(max_new_tokens=8, stop_at_eot=False)
    fast = LanguageModel(_lm(gguf, "int8", exact_steps=False), None, gguf)
    assert len([t.id for t in fast.generate(PROMPT, opts)]) == 8
    for method in ("lookup", "draft", "head", "mirror"):
        with pytest.raises(ValueError, match="needs a target whose steps compute what its verify blocks compute"):
            fast.generate(PROMPT, opts, heron.SpeculativeOptions(method=method))
    exact = LanguageModel(_lm(gguf, "int8"), None, gguf)
    # the target's own draft, built as from a real GGUF file (the tiny file has no tokenizer for bundle_in_memory)
    monkeypatch.setattr("heron.export.gguf_onnx.bundle_in_memory",
                        lambda path, compute, shared_cache, attention, memory_file: (
                            *_bundle(gguf, compute, attention or "rows"), None))
    assert exact.draft_backend(heron.SpeculativeOptions(method="draft")).exact_steps is False
    want = [t.id for t in exact.generate(PROMPT, opts)]
    assert [t.id for t in exact.generate(PROMPT, opts, heron.SpeculativeOptions(method="draft", gamma=3))] == want
    with pytest.raises(ValueError, match="exact_steps=False applies to onnxruntime targets"):
        heron.load_lm(gguf, engine="torch", exact_steps=False)
    with pytest.raises(ValueError, match="exact_steps must be True or False"):
        heron.load_lm(gguf, exact_steps="yes")


def test_rows_attention_is_attention(gguf, monkeypatch):
    """Rows attention (a token's query heads that share a key head as rows of one head, keys and values repeated and
    masked) computes what GroupQueryAttention's own layout computes: on fp32 compute (no int8 rounding between them)
    the logits and hidden states agree to fp32 rounding for a prefill, single steps and a block; a block longer than
    ROWS_CHUNK goes in several calls, its `last` rows (spanning calls) and hidden states the same as in one call."""
    import heron.runtime.lm as runtime_lm

    rows, plain = _lm(gguf, "fp32", attention="rows"), _lm(gguf, "fp32", attention="one-row")
    assert rows.spill == 1 and plain.spill == 0
    a, ha = _steps(rows, PROMPT, NEXT)
    b, hb = _steps(plain, PROMPT, NEXT)
    assert np.allclose(a, b, atol=1e-4) and np.allclose(ha, hb, atol=1e-4)
    assert np.allclose(_blocks(rows, PROMPT, NEXT, 5)[0], b, atol=1e-4)
    long = [(7 * i + 3) % 64 for i in range(100)]
    rows.reset()
    whole = rows.forward(long, last=12)
    whole_hidden = [rows.hidden_at(p) for p in range(88, 100)]
    assert rows.length == 100 and rows.hidden_at(87) is None
    monkeypatch.setattr(runtime_lm, "ROWS_CHUNK", 8)  # 13 calls; the last 12 rows span the last two
    rows.reset()
    chunked = rows.forward(long, last=12)
    assert rows.length == 100 and chunked.shape == whole.shape == (12, 64)
    assert np.allclose(chunked, whole, atol=1e-4)
    assert all(np.allclose(rows.hidden_at(p), h, atol=1e-4) for p, h in zip(range(88, 100), whole_hidden))
    assert rows.hidden_at(87) is None
    plain.reset()
    assert np.allclose(plain.forward(long, last=12), whole, atol=1e-4)


def test_rows_attention_spills_past_the_call_only(gguf):
    """A rows graph writes its repeated keys past the call's end (spill positions per token), where the next call
    writes its own: the cache's valid positions are exactly the tokens fed, whatever was spilled."""
    lm = _lm(gguf, "int8", attention="rows")
    lm.reset()
    lm.forward(PROMPT, last=1)
    lm.forward(NEXT[:1], last=1)
    assert lm.length == len(PROMPT) + 1 and np.abs(_spare(lm)).max() > 0  # the spilled copy of the new key
    lm.forward(NEXT[1:4], last=3)
    assert lm.length == len(PROMPT) + 4 and lm._cache.capacity >= lm.length + 3 * lm.spill
    # a step after a spilling step and a spilling block: what steps alone compute, bit for bit (min_rows keeps steps
    # and blocks equal on this CPU), so nothing spilled was read as a key
    steps, _ = _steps(_lm(gguf, "int8", attention="rows"), PROMPT, NEXT[:5])
    assert np.array_equal(lm.forward(NEXT[4:5], last=1)[0], steps[-1])


@pytest.mark.parametrize("bad", [True, -1, 17, "1", 1.0])
def test_a_manifest_cannot_misstate_the_spill(gguf, bad):
    """The room a rows graph needs past each call is the graph's own word (its metadata): a manifest that says
    otherwise, or says it on a graph that pads attention, or says nonsense, is refused in one line."""
    from heron.runtime.bundle import BundleError
    from heron.runtime.lm import OnnxLM

    graph, manifest = _bundle(gguf, "int8", "rows")
    for claim, message in ((0, "attention_spill says 0, the graph's metadata 1"),
                           (bad, "attention_spill must be an integer in 0..16")):
        manifest.source["attention_spill"] = claim
        with pytest.raises(BundleError, match=message):
            OnnxLM.from_memory(graph, manifest)
    graph, manifest = _bundle(gguf, "int8", "padded")
    manifest.source["attention_spill"] = 1
    with pytest.raises(BundleError, match="for graphs with shared state buffers that do not pad attention"):
        OnnxLM.from_memory(graph, manifest)


def test_the_attention_layout_is_chosen_and_checked():
    """Rows attention is the default where it fits (several query heads per key head, heads in whole blocks) and
    this onnxruntime runs it on the CPU provider; other providers, grown states and pad_attention=False get the
    layouts before it; a layout that cannot work is refused in one line."""
    from heron.export.gguf_onnx import Blocks, attention_for, attention_layout, rows_supported

    smol = (9, 3, 64)
    assert attention_layout("int8", heads=smol) == ("rows" if rows_supported() else "padded")
    assert attention_layout("int8x2", heads=(4, 4, 64)) == "padded"  # one query head per key head: nothing to group
    assert attention_layout("fp32", heads=(4, 4, 64)) == "one-row"
    assert attention_layout("int8", shared_cache=False, heads=smol) == "one-row"
    assert attention_layout("int8", pad_attention=False, heads=smol) == "one-row"
    assert attention_for("CPUExecutionProvider") is None and attention_for("CUDAExecutionProvider") == "padded"
    for kwargs, message in ((dict(attention="row"), "attention must be one of rows, padded, one-row"),
                            (dict(attention="rows", shared_cache=False), "needs shared state buffers"),
                            (dict(attention="padded", shared_cache=False), "needs shared state buffers"),
                            (dict(attention="rows", heads=(9, 3, 48)), "heads in blocks of 32"),
                            (dict(attention="rows", heads=(4, 4, 64)), "several query heads per key head")):
        with pytest.raises(ValueError, match=message):
            attention_layout("int8", **kwargs)
    w = Blocks(2, 64, 4, np.zeros((2, 2, 16), np.uint8), np.ones((2, 2), np.float32))
    assert w.take_columns(np.r_[32:64, 0:32]).scales.shape == (2, 2)
    with pytest.raises(ValueError, match="whole blocks of 32"):
        w.take_columns(np.r_[16:64, 0:16])


def test_a_gguf_target_builds_its_graph_for_its_steps(gguf, monkeypatch):
    """heron.load_lm on a GGUF file builds rows attention for exact steps (the default; padded on another provider)
    and the one-row graph for one-row steps (--fast-steps: plain decoding's fastest graph, nothing around attention)."""
    import heron

    asked = []

    def build(path, compute, attention, memory_file):
        asked.append((attention, memory_file))  # the target streamed into a memory file (bundle_in_memory)
        return (*_bundle(gguf, compute, attention or "rows"), None)
    monkeypatch.setattr("heron.export.gguf_onnx.bundle_in_memory", build)
    monkeypatch.setattr("heron.lm._onnx_model", lambda backend, path: backend)
    exact = heron.load_lm(gguf, compute="int8")
    fast = heron.load_lm(gguf, compute="int8", exact_steps=False)
    assert asked == [(None, True), ("one-row", True)]
    assert exact.spill == 1 and exact.exact_steps and fast.spill == 0 and fast.attention_rows == 1
    assert not fast.exact_steps and fast.min_rows == 1


def test_a_block_in_several_calls_that_fails_leaves_the_cache_as_it_was(gguf, monkeypatch):
    """A long block on a rows graph goes in several calls; one failing part way (here the third) leaves the cache
    holding what it held before the block, and the next call decodes as if the block had never been tried."""
    import heron.runtime.lm as runtime_lm

    monkeypatch.setattr(runtime_lm, "ROWS_CHUNK", 4)
    lm = _lm(gguf, "int8", attention="rows")
    lm.reset()
    lm.forward(PROMPT, last=1)  # two calls
    calls, block = [0], runtime_lm.OnnxLM._forward_block

    def flaky(self, tokens, n):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("onnxruntime failed")
        return block(self, tokens, n)
    monkeypatch.setattr(runtime_lm.OnnxLM, "_forward_block", flaky)
    with pytest.raises(RuntimeError, match="onnxruntime failed"):
        lm.forward(NEXT, last=2)
    assert lm.length == len(PROMPT) and lm.hidden_at(len(PROMPT) - 1) is None
    monkeypatch.setattr(runtime_lm.OnnxLM, "_forward_block", block)
    got = lm.forward(NEXT[:1], last=1)
    assert np.array_equal(got, _steps(_lm(gguf, "int8", attention="rows"), PROMPT, NEXT[:1])[0][-1:])
