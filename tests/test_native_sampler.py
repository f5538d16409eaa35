"""heron.runtime.native.Sampler: decoding.probs and decoding.draw in the native library. Its distributions are numpy's
to float rounding (the same words kept by top-p, top-k and min-p, ties included), its draws are numpy's own arithmetic
(tests/test_speculative.py::test_draw_is_what_choice_draws_from_the_same_uniform runs both samplers), a certain word
spends no uniform, bad input is one line, threads share nothing, and decoding picks it where the library is built.
Skips where no C compiler exists."""
import threading

import numpy as np
import pytest

from heron.runtime import decoding, native

if native._compiler() is None:
    pytest.skip("no C compiler here: heron's native library cannot be built", allow_module_level=True)


@pytest.fixture(scope="module")
def sampler():
    return native.Sampler(native.load(native.build()))


def _close_to_numpy(fast: native.Sampler, logits: np.ndarray, temperature: float, top_p: float, top_k: int = 0,
                    min_p: float = 0.0) -> None:
    got = fast.probs(logits, temperature, top_p, top_k, min_p)
    want = decoding.numpy_probs(logits, temperature, top_p, top_k, min_p)
    assert got.shape == want.shape and got.dtype == np.float64
    # float exponentials: the likeliest words within 1e-6, words e^-40 down within 1e-5 (the shifted logit's float
    # rounding), and 0 for what float cannot hold (below 1e-38 of the likeliest)
    big = want > 1e-30
    np.testing.assert_allclose(got[big], want[big], rtol=2e-5)
    assert np.all(got[~big] <= 1e-30)
    assert np.all(np.isin(np.flatnonzero(got), np.flatnonzero(want)))  # nothing top-p left out
    for g, w in zip(got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])):
        assert g.sum() == pytest.approx(1.0, abs=1e-12)
        top = w.max()
        np.testing.assert_allclose(g[w > 1e-3 * top], w[w > 1e-3 * top], rtol=2e-6)


def test_distributions_are_numpys_to_float_rounding(sampler):
    """Temperatures, top-p / top-k / min-p cuts and spreads of logits, one row and blocks of rows; the cuts keep
    numpy's words."""
    rng = np.random.default_rng(0)
    for trial in range(120):
        V = int(rng.choice([7, 50, 1000, 49152]))
        shape = (V,) if trial % 3 else (3, V)
        logits = (rng.standard_normal(shape) * rng.uniform(0.5, 8)).astype(np.float32)
        temperature = float(rng.choice([0.2, 0.7, 1.0, 1.6]))
        top_p = float(rng.choice([1.0, 0.95, 0.9, 0.5, 0.1]))
        top_k = int(rng.choice([0, 0, 1, 5, 50, 100000]))
        min_p = float(rng.choice([0.0, 0.0, 0.02, 0.2]))
        cut = (top_p, top_k, min_p)
        _close_to_numpy(sampler, logits, temperature, *cut)
        if top_p < 1.0 or 0 < top_k < V or min_p > 0:  # a cut (else words below 1e-38 differ: float's 0)
            got = sampler.probs(logits, temperature, *cut).reshape(-1, V)
            want = decoding.numpy_probs(logits, temperature, *cut).reshape(-1, V)
            for g, w in zip(got, want):
                assert set(np.flatnonzero(g)) == set(np.flatnonzero(w))


def test_top_p_keeps_numpys_words_in_its_order_when_words_tie(sampler):
    """Logits on a grid of 0.5 (many words equally likely, exactly: the same float exponentials): the nucleus is
    numpy's, ties broken by the lower id; and a nucleus wider than the first candidates (a flat distribution, the
    candidates widened down to every word)."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        V = int(rng.integers(2, 3000))
        logits = (np.round(rng.standard_normal(V) * rng.uniform(0.5, 6) * 2) / 2).astype(np.float32)
        top_p = float(rng.choice([0.3, 0.5, 0.8, 0.9, 0.99, 1.0]))
        top_k = int(rng.choice([0, 1, 2, 7, 100])) if trial % 2 else 0
        min_p = float(rng.choice([0.0, 0.1, 0.5])) if trial % 3 == 1 else 0.0
        got = sampler.probs(logits, 1.0, top_p, top_k, min_p)
        want = decoding.numpy_probs(logits, 1.0, top_p, top_k, min_p)
        assert set(np.flatnonzero(got)) == set(np.flatnonzero(want)), trial
    flat = np.zeros(5000, np.float32)
    flat[:10] = 0.01
    got = sampler.probs(flat, 1.0, 0.999)  # every word within 1/64 of the likeliest: the first pass holds them all
    assert np.count_nonzero(got) == np.count_nonzero(decoding.numpy_probs(flat, 1.0, 0.999))
    steep = np.arange(3000, dtype=np.float32) * -0.01  # a slow slope: the nucleus reaches past the first candidates
    assert set(np.flatnonzero(sampler.probs(steep, 1.0, 0.995))) == set(
        np.flatnonzero(decoding.numpy_probs(steep, 1.0, 0.995)))


def test_a_certain_word_from_logits_spends_no_uniform(sampler):
    """A word all others are far below (exp underflows to 0 beside it) is certain: p exactly 1, as numpy's float64
    gives at these logits, and draw() returns it without a uniform, as numpy_draw does."""
    logits = np.zeros(100, np.float32)
    logits[17] = 200.0
    for top_p in (1.0, 0.9):
        p = sampler.probs(logits, 0.5, top_p)
        assert p[17] == 1.0 == decoding.numpy_probs(logits, 0.5, top_p)[17]
        r = np.random.default_rng(0)
        assert sampler.draw(p, r) == 17 and r.random() == np.random.default_rng(0).random()


def test_bad_input_is_one_line(sampler):
    nan = np.zeros(10, np.float32)
    nan[3] = np.nan
    for bad in (nan, np.full(10, np.inf, np.float32)):
        with pytest.raises(ValueError, match="finite"):
            sampler.probs(bad, 0.8, 1.0)
    for bad in ((0.0, 1.0), (-1.0, 1.0), (0.8, 0.0), (0.8, 1.5), (float("nan"), 1.0), (0.8, 1.0, -1),
                (0.8, 1.0, 0, 1.0), (0.8, 1.0, 0, -0.1)):
        with pytest.raises(ValueError, match="temperature must be > 0, top_p in"):
            sampler.probs(np.zeros(10, np.float32), *bad)
    for p in (np.zeros(10), np.full(10, np.nan)):
        with pytest.raises(ValueError, match="finite, non-negative mass"):
            sampler.draw(p, np.random.default_rng(0))
    masked = np.zeros(13, np.float32)
    masked[::2] = -np.inf  # words a caller rules out: probability 0, never drawn
    p = sampler.probs(masked, 0.8, 1.0)
    assert np.all(p[::2] == 0) and np.allclose(p[1::2], 1 / 6)
    with pytest.raises(ValueError, match="finite"):
        sampler.probs(np.full(9, -np.inf, np.float32), 0.8, 1.0)  # nothing left to draw


def test_threads_share_no_scratch(sampler):
    """Two threads sampling at once (Mirror-SD's draft beside the target) get what each gets alone."""
    rng = np.random.default_rng(2)
    rows = [(rng.standard_normal(20000) * 4).astype(np.float32) for _ in range(8)]
    alone = [sampler.probs(r, 0.8, 0.9) for r in rows]
    got = [[None] * len(rows) for _ in range(2)]

    def work(k):
        for _ in range(20):
            for i, r in enumerate(rows):
                got[k][i] = sampler.probs(r, 0.8, 0.9)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(a, b) for g in got for a, b in zip(alone, g))


def test_the_portable_build_samples_the_same_distributions(tmp_path, sampler):
    """The portable C (no AVX2: expf, sums in another order): numpy's distributions to float rounding, the same
    draws."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the variant's -march name is x86-64's")
    flags = tuple("-march=x86-64" if f == "-march=native" else f for f in native.CFLAGS)
    try:
        portable = native.Sampler(native.load(native.build(tmp_path / "lib-portable.so", flags)))
    except native.NativeError as e:
        pytest.skip(f"this compiler cannot build -march=x86-64: {e}")
    rng = np.random.default_rng(4)
    for top_p in (1.0, 0.9):
        logits = (rng.standard_normal(3001) * 3).astype(np.float32)
        _close_to_numpy(portable, logits, 0.8, top_p)
        p = decoding.numpy_probs(logits, 0.8, top_p)
        assert all(portable.draw(p, np.random.default_rng(s)) == sampler.draw(p, np.random.default_rng(s))
                   for s in range(50))


def test_decoding_samples_natively_where_the_library_is_built(sampler, monkeypatch):
    """decoding.probs / draw go to the native sampler for float32 logits where it is built (numpy for float64 logits,
    and with SAMPLER = "numpy"); a sampled answer of the shipped lm-nano is the same words either way (they differ
    only where a uniform falls within float rounding of a word's edge)."""
    import heron

    calls = []
    real = native.Sampler.probs
    monkeypatch.setattr(native.Sampler, "probs", lambda self, *a: calls.append(1) or real(self, *a))
    x = np.linspace(-3, 3, 50).astype(np.float32)
    decoding.probs(x, 0.8, 1.0)
    assert calls == [1]
    decoding.probs(x.astype(np.float64), 0.8, 1.0)
    monkeypatch.setattr(decoding, "SAMPLER", "numpy")
    decoding.probs(x, 0.8, 1.0)
    assert calls == [1]
    monkeypatch.setattr(native, "_SAMPLER", [None])  # not built here
    monkeypatch.setattr(decoding, "SAMPLER", "auto")
    decoding.probs(x, 0.8, 1.0)
    assert calls == [1]
    monkeypatch.undo()

    lm = heron.load_lm(None, threads=1)
    prompt = lm.encode("The weather today")
    answers = {}
    for mode in ("auto", "numpy"):
        monkeypatch.setattr(decoding, "SAMPLER", mode)
        opts = heron.GenerationOptions(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=3)
        answers[mode] = [t.id for t in lm.generate(prompt, opts)]
    assert answers["auto"] == answers["numpy"] and len(answers["auto"]) > 5
