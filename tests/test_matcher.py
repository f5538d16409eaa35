"""CTC keyword matcher: exact matches, mismatches, subsequence starts, streaming equality."""
import numpy as np
import pytest

from heron.runtime.ctc_kws import CTCKeywordMatcher, MatcherOptions


def _posteriors(seq, n_classes=40, low=-8.0):
    lp = np.full((len(seq), n_classes), low)
    for t, c in enumerate(seq):
        lp[t, c] = -0.01
    return lp


def test_exact_keyword_scores_one_and_finds_its_start():
    lp = _posteriors([0, 0, 5, 5, 0, 7, 0, 9, 0, 3, 0])
    m = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0))
    score, start, _ = m.step(lp, m.init_state())
    t = int(np.argmax(score))
    assert t == 7 and score[t] == pytest.approx(1.0, abs=1e-3) and start[t] == 2


def test_one_wrong_phoneme_costs_its_likelihood_ratio():
    lp = _posteriors([0, 5, 0, 7, 0, 9, 0])
    g = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0))
    good = g.step(lp, g.init_state())[0].max()
    m = CTCKeywordMatcher([5, 8, 9], MatcherOptions(gap_penalty=0.0))
    bad = m.step(lp, m.init_state())[0].max()
    assert bad < 0.1 * good
    assert bad == pytest.approx(np.exp(-(8.0 - 0.01) / 3), rel=0.05)


def test_repeated_phoneme_needs_a_blank_between():
    m = CTCKeywordMatcher([5, 5], MatcherOptions(gap_penalty=0.0))
    with_blank = m.step(_posteriors([0, 5, 0, 5, 0]), m.init_state())[0].max()
    without = m.step(_posteriors([0, 5, 5, 0, 0]), m.init_state())[0].max()
    assert with_blank > 0.99 and without < 0.1


def test_streaming_equals_whole():
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(40) * 0.3, size=50))
    m = CTCKeywordMatcher([3, 9, 12, 4])
    whole, wstart, _ = m.step(lp, m.init_state())
    st = m.init_state()
    parts, starts = [], []
    for a, b in [(0, 7), (7, 8), (8, 31), (31, 50)]:
        s, st_, st = m.step(lp[a:b], st)
        parts.append(s), starts.append(st_)
    assert np.allclose(np.concatenate(parts), whole) and np.array_equal(np.concatenate(starts), wstart)


def test_keyword_longer_than_max_frames_is_not_matched():
    spread = [5] + [0] * 30 + [7] + [0] * 30 + [9] + [0]  # phonemes scattered over 2.5 s of blank
    lp = _posteriors(spread)
    loose = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0), max_frames=1000)
    assert loose.step(lp, loose.init_state())[0].max() > 0.99
    bounded = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0))  # default: 10 + 8 * 3 = 34 frames
    # within 34 frames at least one phoneme must come from a frame that does not say it: exp(-8/3)
    assert bounded.max_frames == 34 and bounded.step(lp, bounded.init_state())[0].max() < 0.1


def test_gap_penalty_costs_blank_frames_inside_the_keyword():
    tight, gappy = _posteriors([5, 0, 7, 0, 9]), _posteriors([5, 0, 0, 0, 0, 0, 7, 0, 9])
    m = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.3))
    a, b = m.step(tight, m.init_state())[0].max(), m.step(gappy, m.init_state())[0].max()
    assert a > b and np.log(a) - np.log(b) == pytest.approx(4 * 0.3 / 3, abs=0.02)


def test_bad_keywords():
    with pytest.raises(ValueError):
        CTCKeywordMatcher([])
    with pytest.raises(ValueError):
        CTCKeywordMatcher([0, 3])


def test_dsp_partition_finds_word_boundaries():
    from heron.runtime.dsp import dsp_partition

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 16))
    audio = np.concatenate([np.repeat(w[0:1], 5, 0), np.repeat(w[1:2], 3, 0), np.repeat(w[2:3], 6, 0)])
    audio = audio + 0.1 * rng.standard_normal(audio.shape)
    score, segs = dsp_partition(audio, w)
    assert segs == [(0, 5), (5, 8), (8, 14)] and score > 0.95
    assert dsp_partition(audio, w[::-1])[0] < 0.5  # words in the wrong order fit badly


def test_dsp_ignores_unvoiced_frames_and_trims_words():
    from heron.runtime.dsp import dsp_partition

    rng = np.random.default_rng(1)
    w = rng.standard_normal((2, 8))
    pause = rng.standard_normal((4, 8))  # silence frames that look like nothing in particular
    audio = np.concatenate([np.repeat(w[0:1], 3, 0), pause, np.repeat(w[1:2], 3, 0)])
    voiced = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1], bool)
    _, segs = dsp_partition(audio, w, voiced=voiced)
    assert segs == [(0, 3), (7, 10)]
    assert dsp_partition(audio, w, voiced=np.zeros(10, bool)) == (-1.0, [])


def test_posterior_weight_charges_unsure_frames_and_every_path_agrees():
    from heron.runtime.ctc_kws import CTCMatcherBank

    # the same best-class ranking, but the encoder is sure (-0.01) or unsure (-2.0) of the keyword's phonemes
    sure, unsure = _posteriors([0, 5, 0, 7, 0, 9, 0]), _posteriors([0, 5, 0, 7, 0, 9, 0])
    for t, c in enumerate([0, 5, 0, 7, 0, 9, 0]):
        if c:
            unsure[t, c] = -2.0
    plain = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0))
    weighted = CTCKeywordMatcher([5, 7, 9], MatcherOptions(gap_penalty=0.0, posterior_weight=1.0))
    assert plain.step(unsure, plain.init_state())[0].max() == pytest.approx(1.0, abs=1e-3)  # the ratio alone: a match
    assert weighted.step(sure, weighted.init_state())[0].max() > 0.98
    assert weighted.step(unsure, weighted.init_state())[0].max() == pytest.approx(np.exp(-2.0), rel=0.02)
    # the bank, the batch scorer and the streaming step agree with a weight too
    rng = np.random.default_rng(1)
    lp = np.log(rng.dirichlet(np.ones(40) * 0.3, size=60))
    opts = MatcherOptions(posterior_weight=0.7)
    ms = [CTCKeywordMatcher(c, opts) for c in ([3, 9, 12, 4], [7, 7, 2], [5, 8])]
    bank = CTCMatcherBank(ms)
    scores, starts, _ = bank.step(lp, bank.init_state())
    for k, m in enumerate(ms):
        s, st, _ = m.step(lp, m.init_state())
        assert np.allclose(scores[:, k], s) and np.array_equal(starts[:, k], st)
        assert m.max_scores_batch(lp[None])[0] == pytest.approx(s.max(), rel=1e-4)
    with pytest.raises(ValueError, match="share the matcher options"):
        CTCMatcherBank([ms[0], CTCKeywordMatcher([3, 4], MatcherOptions())])


def test_matcher_options_are_one_schema_for_manifest_runtime_and_export():
    from dataclasses import fields

    from heron.runtime.bundle import BundleError

    assert set(MatcherOptions.RANGES) == {f.name for f in fields(MatcherOptions)}  # every option has its range
    opts = MatcherOptions(gap_penalty=0.2, frames_base=12, frames_per_phoneme=9, posterior_weight=3.0)
    assert MatcherOptions.from_dict(opts.to_dict(), "m") == opts
    for bad, why in (({**opts.to_dict(), "frames_base": 1.5}, "integer"), ({**opts.to_dict(), "gap_penalty": -1}, r"\[0.0"),
                     ({k: v for k, v in opts.to_dict().items() if k != "posterior_weight"}, "missing"),
                     ({**opts.to_dict(), "extra": 1}, "does not know"), ([], "object")):
        with pytest.raises(BundleError, match=why):
            MatcherOptions.from_dict(bad, "m")


def test_bank_fresh_state_is_the_packed_fresh_states():
    """The bank's fresh state (made for every chunk the speech gate closes) equals packing each keyword's own."""
    from heron.runtime.ctc_kws import CTCKeywordMatcher, CTCMatcherBank

    bank = CTCMatcherBank([CTCKeywordMatcher(c) for c in ([3, 5], [7, 7, 2, 9], [4])])
    for frame in (0, 1234):
        got, want = bank.init_state(frame), bank.pack([m.init_state(frame) for m in bank.matchers])
        assert got.frame == want.frame == frame
        assert np.array_equal(got.score, want.score) and np.array_equal(got.start, want.start)
        assert got.start.dtype == want.start.dtype
