"""One kernel for single steps and verify blocks (runtime.lm MIN_ROWS): onnxruntime's int8 MatMulNBits rounds a
one-row call differently from a call of several rows, so an int8 graph pads one-token calls with a scratch token
and asks the head for at least two rows. Then a plain step computes bit for bit what a verify block computes, and
speculation returns plain decoding's tokens exactly; the scratch position never shows (length, hidden states)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("gguf")

from conftest import write_tiny_llama  # noqa: E402
from heron.runtime import decoding as sp  # noqa: E402


def _lm(path, compute, min_rows=None):
    from heron.export.gguf_onnx import build_graph
    from heron.runtime.lm import OnnxLM, lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes, sha256_path

    model, cfg, _, _ = build_graph(path, compute=compute)
    graph = model.SerializeToString()
    manifest = lm_manifest(cfg, name="t", eot_id=None, files={"model.int4.onnx": FileEntry(
        "model.int4.onnx", sha256_bytes(graph), len(graph))},
        source={"gguf": path.name, "gguf_sha256": sha256_path(path), "compute": compute})
    return OnnxLM.from_memory(graph, manifest, min_rows=min_rows)


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


def test_int8_steps_compute_what_blocks_compute(gguf):
    """int8 pads by default: logits and hidden states of single steps equal those of blocks of 2, 3 and 5 and of
    a prefill that carries a window, bit for bit; the cache holds exactly the tokens fed."""
    lm = _lm(gguf, "int8")
    assert lm.min_rows == 2 and lm.free_draft_tokens == 1
    steps, hidden = _steps(lm, PROMPT, NEXT)
    assert lm.length == len(PROMPT) + len(NEXT)
    for T in (2, 3, 5):
        lm.reset()
        rows = [lm.forward(PROMPT, last=1)[0]]
        hid = [lm.hidden_at(len(PROMPT) - 1)]
        for i in range(0, len(NEXT), T):
            block = NEXT[i:i + T]
            rows.extend(lm.forward(block, last=len(block)))
            hid.extend(lm.hidden_at(lm.length - len(block) + j) for j in range(len(block)))
        assert np.array_equal(np.stack(rows), steps), T
        assert np.array_equal(np.stack(hid), hidden), T
    lm.reset()
    both = lm.forward(PROMPT + NEXT[:3], last=4)  # the first round of a speculative run: prefill and a window
    assert np.array_equal(both, steps[:4])
    # the one-row kernel on request: the same model, the faster call, rounding of its own (close, not exact)
    fast = _lm(gguf, "int8", min_rows=1)
    assert fast.min_rows == 1 and fast.free_draft_tokens == 0
    one, _ = _steps(fast, PROMPT, NEXT)
    assert np.corrcoef(one.ravel(), steps.ravel())[0, 1] > 0.99


def test_int8x2_and_fp32_use_one_row(gguf):
    """Graphs whose kernels agree across row counts closely enough (int8x2: two rows per token already; fp32)
    run one-token calls as they are."""
    for compute in ("int8x2", "fp32"):
        lm = _lm(gguf, compute)
        assert lm.min_rows == 1 and lm.free_draft_tokens == 0
    from heron.runtime.lm import VERIFY_COSTS
    assert _lm(gguf, "int8").verify_cost == VERIFY_COSTS[("int8", 2)] < VERIFY_COSTS[("int8", 1)]


def test_padding_stops_at_the_context_end(gguf):
    """Where the context has no room for the scratch token the last call runs one row (plain decoding and
    speculation both do: a draft window never fits there either); nothing is left in the cache past its end."""
    lm = _lm(gguf, "int8")
    lm.reset()
    lm.forward(list(np.arange(lm.max_len - 1) % 64), last=1)
    out = lm.forward([7], last=1)
    assert out.shape == (1, 64) and np.isfinite(out).all() and lm.length == lm.max_len
    with pytest.raises(ValueError, match="exceed the context"):
        lm.forward([7])


@pytest.mark.parametrize("bad", [0, 3, -1, True, 1.5, "2", None])
def test_min_rows_refuses_bad_values(gguf, bad):
    lm = _lm(gguf, "int8")
    with pytest.raises(ValueError, match="min_rows must be 1 or 2"):
        lm.min_rows = bad
    assert lm.min_rows == 2


def test_speculation_on_int8_returns_plain_decodings_tokens(gguf):
    """Greedy prompt lookup (adaptive and fixed windows) on the padded int8 graph: plain decoding's tokens,
    with windows verified (not a plain run in disguise)."""
    lm = _lm(gguf, "int8")
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
