"""Speculative decoding is lossless: greedy output equals plain decoding token for token for every
method, sampled output follows the target's distribution (a chi-square test that a deliberately biased
sampler fails), and a failing or stalling draft never changes the output."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from heron.export.onnx_lm import write_bundle  # noqa: E402
from heron.models.lm.backend import TorchLM  # noqa: E402
from heron.models.lm.model import Transformer, preset  # noqa: E402
from heron.runtime import decoding as sp  # noqa: E402
from heron.runtime import mirror as ms  # noqa: E402
from heron.runtime.decoding import SpeculativeOptions as Spec  # noqa: E402

from conftest import Clocked, InjectFault, chi2_pvalue as _chi2_pvalue  # noqa: E402
from heron.runtime.lm import OnnxLM  # noqa: E402
from heron.runtime.tokenizer import require_same_vocabulary, vocabulary_record  # noqa: E402

V = 32


def _model(layers, seed, scale=1.0):
    torch.manual_seed(seed)
    m = Transformer(preset("tiny", n_layers=layers, vocab_size=V, max_seq_len=96)).eval()
    with torch.no_grad():
        m.embed.weight.mul_(scale)  # larger logits: peakier, more interesting distributions
    return m


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread (several only contend with each other and the draft's thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(tmp_path_factory, scale):
    target = _model(3, 0, scale=scale)
    draft = _model(1, 1, scale=scale)
    with torch.no_grad():  # a draft that shares the target's embeddings agrees with it often
        draft.embed.weight.copy_(target.embed.weight)
    folder = write_bundle(draft, tmp_path_factory.mktemp("draft"))
    return target, draft, folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Peaky models (greedy tests: long agreeing runs, so branches and rollbacks are exercised)."""
    return _pair(tmp_path_factory, 40.0)


@pytest.fixture(scope="module")
def soft_pair(tmp_path_factory):
    """Models with spread-out next-token distributions (sampling tests)."""
    return _pair(tmp_path_factory, 3.0)


PROMPTS = [[1], [3, 4], [5, 6, 7, 8], [2] * 9, [7, 1, 7, 1, 7], [11, 30, 2, 19, 4, 4, 8], list(range(20)), [31, 0]]


def test_greedy_equals_plain_for_every_method(pair):
    target, draft, folder = pair
    T, D, Dt = TorchLM(target), OnnxLM(folder), TorchLM(draft)
    opts = sp.GenerationOptions(max_new_tokens=24)
    hits = 0
    for prompt in PROMPTS:
        ref = [t.id for t in sp.plain(T, prompt, opts)]
        assert [t.id for t in sp.speculative(T, Dt, prompt, opts, Spec(gamma=3))] == ref
        assert [t.id for t in sp.speculative(T, D, prompt, opts, Spec(gamma=5))] == ref
        for gamma in (1, 4, 8):
            for adaptive in (True, False):
                assert [t.id for t in sp.lookup(T, prompt, opts, Spec("lookup", gamma=gamma, adaptive=adaptive))] == ref
        for exit_layer, kappa in ((1, 1), (2, 3)):
            st = sp.DecodeStats()
            assert [t.id for t in ms.mirror(T, D, prompt, opts, Spec("mirror", gamma=4, kappa=kappa,
                                                                        exit_layer=exit_layer), stats=st)] == ref
            hits += st.branch_hits
    assert hits > 0  # branches were really reused somewhere


def test_every_method_stops_at_any_end_id(soft_pair):
    """A set of end ids (a chat model ends a turn with one token, a text with another): generation stops
    at the first of them, which is the last token yielded, for plain decoding and every speculative method."""
    target, _, folder = soft_pair
    ends = set(range(0, V, 4))
    T, D = TorchLM(target, end_ids=ends), OnnxLM(folder)
    stopped = set()
    for seed in range(4):
        opts = sp.GenerationOptions(max_new_tokens=60, temperature=1.0, seed=seed)
        runs = {"plain": sp.plain(T, [5, 6, 7, 9], opts),
                "draft": sp.speculative(T, D, [5, 6, 7, 9], opts, Spec(gamma=5)),
                "mirror": ms.mirror(T, D, [5, 6, 7, 9], opts, Spec("mirror", gamma=4, exit_layer=1))}
        for method, run in runs.items():
            ids = [t.id for t in run]
            assert not ends & set(ids[:-1]), method  # nothing after an end id
            if len(ids) < 60:
                assert ids[-1] in ends, method
                stopped.add((method, ids[-1]))
        no_stop = sp.GenerationOptions(max_new_tokens=60, temperature=1.0, seed=seed, stop_at_eot=False)
        assert len(list(sp.plain(T, [5, 6, 7, 9], no_stop))) == 60
    assert {m for m, _ in stopped} == {"plain", "draft", "mirror"} and len({e for _, e in stopped}) >= 2


def test_context_end_and_bad_input(pair):
    target, _, folder = pair
    T, D = TorchLM(target), OnnxLM(folder)
    opts = sp.GenerationOptions(max_new_tokens=200)
    ref = [t.id for t in sp.plain(T, [1, 2], opts)]
    assert len(ref) == 94  # stops at the 96-token context without an error
    assert [t.id for t in ms.mirror(T, D, [1, 2], opts, Spec("mirror", gamma=4))] == ref
    with pytest.raises(ValueError, match="empty prompt"):
        list(sp.speculative(T, D, [], opts))
    with pytest.raises(ValueError, match="gamma"):
        list(sp.speculative(T, D, [1], opts, Spec(gamma=0)))
    with pytest.raises(ValueError, match="exit-layer"):
        list(ms.mirror(T, D, [1], opts, Spec("mirror", exit_layer=3)))
    with pytest.raises(ValueError, match="branch"):  # early-exit branches need a draft whose states fork
        list(ms.mirror(T, TorchLM(target), [1], opts, Spec("mirror", kappa=2)))
    # kappa 0 builds one branch at a time: a draft that can only rewind (a torch cache) serves
    assert [t.id for t in ms.mirror(T, TorchLM(target), [1, 2], opts, Spec("mirror", kappa=0))] == ref


@pytest.mark.parametrize("mode", ["raise", "stall"])
@pytest.mark.parametrize("method", ["draft", "mirror"])
def test_draft_fault_falls_back_without_changing_output(pair, mode, method):
    target, _, folder = pair
    T = TorchLM(target)
    opts = sp.GenerationOptions(max_new_tokens=30)
    ref = [t.id for t in sp.plain(T, [4, 5, 6], opts)]
    D = InjectFault(OnnxLM(folder), after_calls=7, mode=mode, stall_s=3.0)
    st = sp.DecodeStats()
    fn = sp.speculative if method == "draft" else ms.mirror
    out = [t.id for t in fn(T, D, [4, 5, 6], opts, Spec(method, gamma=3, draft_timeout_s=0.5), stats=st)]
    assert out == ref
    assert st.fallback and ("stalled" if mode == "stall" else "injected") in st.fallback


# --- sampling: the distribution of the output equals the target's -------------------------------

def _target_marginals(target, prompt, temperature, *cuts):
    """Exact distributions of the first and second generated token under the target (cuts: top_p, top_k, min_p)."""
    with torch.no_grad():
        p1 = sp.probs(target(torch.tensor([prompt])).logits[0, -1].numpy(), temperature, *(cuts or (1.0,)))
        ctx = torch.tensor([prompt + [t] for t in range(V)])
        p2c = sp.probs(target(ctx).logits[:, -1].numpy(), temperature, *(cuts or (1.0,)))
    return p1, p1 @ p2c


def test_sampling_with_top_k_and_min_p_matches_the_cut_distribution(soft_pair):
    """Speculative sampling with top-k, top-p and min-p cuts draws from the target's cut distribution (the chi-square
    test on the first and second token), the draft's q cut the same way."""
    target, _, folder = soft_pair
    prompt, cuts, n = [3, 9, 27], (0.95, 6, 0.02), 1000
    p1, p2 = _target_marginals(target, prompt, 1.0, *cuts)
    assert 2 <= np.count_nonzero(p1) <= 6 and p1.max() < 0.9  # the cuts bite, and the test has power
    T, D = TorchLM(target), OnnxLM(folder)
    c1, c2 = np.zeros(V), np.zeros(V)
    for seed in range(n):
        opts = sp.GenerationOptions(max_new_tokens=2, temperature=1.0, top_p=cuts[0], top_k=cuts[1], min_p=cuts[2],
                                    seed=seed)
        out = [t.id for t in sp.speculative(T, D, prompt, opts, Spec("draft", gamma=2))]
        c1[out[0]] += 1
        c2[out[1]] += 1
    assert c1[p1 == 0].sum() == 0 and c2[p2 == 0].sum() == 0  # nothing the cuts leave out
    assert min(_chi2_pvalue(c1, p1), _chi2_pvalue(c2, p2)) > 1e-3


@pytest.mark.parametrize("method", ["draft", "mirror", "mtp", "lookup"])
def test_sampling_matches_target_distribution(soft_pair, method, monkeypatch):
    target, _, folder = soft_pair
    # lookup: a prompt whose last 2 tokens recur, so that [27, 3] is proposed and verified
    temperature, prompt, n = 1.0, [3, 9, 27, 3, 9] if method == "lookup" else [3, 9, 27], 1000
    p1, p2 = _target_marginals(target, prompt, temperature)
    T, D = TorchLM(target), OnnxLM(folder)
    if method == "mtp":
        import copy

        from heron.models.lm.mtp import MTPConfig, MTPModel, generate_mtp
        mtp = MTPModel(copy.deepcopy(target), MTPConfig(n_masks=2, rank=2))
        mtp_target = TorchLM(mtp.base)

        def fn(T, D, prompt, opts, spec):
            return generate_mtp(mtp, mtp_target, prompt, opts)
    elif method == "lookup":
        def fn(T, D, prompt, opts, spec):
            return sp.lookup(T, prompt, opts, spec)
    else:
        fn = sp.speculative if method == "draft" else ms.mirror

    def histograms():
        c1, c2 = np.zeros(V), np.zeros(V)
        for seed in range(n):
            out = [t.id for t in fn(T, D, prompt, sp.GenerationOptions(max_new_tokens=2, temperature=temperature,
                                                                       seed=seed),
                                 Spec(method, gamma=2, **sp.method_options(method, adaptive=False)))]
            # (lookup: both draft tokens verified)
            c1[out[0]] += 1
            c2[out[1]] += 1
        return c1, c2

    c1, c2 = histograms()
    assert min(_chi2_pvalue(c1, p1), _chi2_pvalue(c2, p2)) > 1e-3
    assert p1.max() < 0.9 and p2.max() < 0.9  # the distributions are spread out: the test has power

    # the same test must catch a sampler that keeps every draft token (no rejection step)
    def biased(p, q, draft, rng, stats=None):
        return len(draft), sp.draw(p[len(draft)], rng)
    monkeypatch.setattr(sp, "verify", biased)
    c1, c2 = histograms()
    assert min(_chi2_pvalue(c1, p1), _chi2_pvalue(c2, p2)) < 1e-3


def test_lookup_window_copies_what_followed_the_latest_match():
    seq = [5, 1, 2, 3, 9, 9, 1, 2, 3, 4, 7, 1, 2, 3]
    assert sp.lookup_window(seq, 3) == [4, 7, 1]  # "1 2 3" last seen before position 9
    assert sp.lookup_window(seq, 1) == [4]
    assert sp.lookup_window([8, 6, 8], 4) == []  # one recurring token is no evidence (n >= 2 by default)
    assert sp.lookup_window([8, 6, 8], 4, ngram=(3, 1)) == [6, 8]  # with 1-grams; shorter than gamma
    assert sp.lookup_window([1, 2, 3], 4) == [] and sp.lookup_window([], 4) == []
    assert sp.lookup_window([4, 4, 4, 4], 2) == [4]  # the match ending right before the suffix


def test_lookup_prefers_the_source_a_longer_suffix_matches():
    """The longest recurring suffix (up to LOOKUP_NGRAM[0] words) picks where the text is being copied from, over a
    later place where only its last three words occur (a copy's next words are the source's, not the coincidence's)."""
    source, elsewhere = [10, 11, 1, 2, 3, 20, 21, 22], [1, 2, 3, 30, 31]
    seq = source + elsewhere + [10, 11, 1, 2, 3]
    assert sp.LOOKUP_NGRAM[0] >= 5
    assert sp.lookup_window(seq, 3) == [20, 21, 22]
    assert sp.lookup_window(seq, 3, ngram=(3, 2)) == [30, 31, 10]  # three words alone: the latest coincidence
    assert sp.LookupIndex().window(seq, 3) == [20, 21, 22]


@pytest.mark.parametrize("ngram", [(3, 2), (3, 1), (4, 2), (6, 2)])
def test_the_lookup_index_proposes_what_lookup_window_proposes(ngram):
    """LookupIndex keeps each n-gram's latest start as the context grows: at every length, for any window size, the
    window lookup_window computes from scratch; a context that is not the one indexed (another list, a shorter one)
    starts again."""
    rng = np.random.default_rng(5)
    for alphabet in (3, 6):
        index, seq = sp.LookupIndex(ngram), []
        for _ in range(120):
            seq.extend(int(t) for t in rng.integers(0, alphabet, int(rng.integers(1, 4))))
            g = int(rng.integers(1, 9))
            assert index.window(seq, g) == sp.lookup_window(seq, g, ngram), (seq, g)
        other = list(seq[:40])
        assert index.window(other, 5) == sp.lookup_window(other, 5, ngram)
        del seq[30:]
        assert index.window(seq, 5) == sp.lookup_window(seq, 5, ngram)


def test_lookup_windows_are_cut_to_the_length_that_pays():
    """best_window: none when acceptance is too low to pay for verification, longer as it rises, every
    available token when verification is free; the drafter learns acceptance from its rounds, skips
    windows on text it cannot predict, drifts back to trying, and keeps long windows on copied text."""
    assert sp.best_window(5, 0.2) == 0 and sp.best_window(5, 0.0) == 0
    ks = [sp.best_window(6, p) for p in (0.3, 0.6, 0.8, 0.9, 0.97)]
    assert ks == sorted(ks) and ks[0] == 0 and ks[-1] >= 4
    assert sp.best_window(3, 0.5, cost=0.0) == 3 and sp.best_window(0, 0.9) == 0
    seq = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]  # "1 2 3" recurs: lookup proposes [4, 5, 6, 7, 1]
    d = sp.LookupDrafter(64)
    assert 0 < len(d.propose(seq, 5)[0]) < 5  # the prior alone does not justify the whole window
    for _ in range(6):
        d.observe(len(d.propose(seq, 5)[0]) or 1, 0)  # every window rejected at its first token
    assert d.propose(seq, 5) == ([], None)  # a plain step instead
    skipped = 0
    while d.propose(seq, 5) == ([], None):
        skipped += 1
        assert skipped < 200
    assert skipped >= 1  # it recovered after some skipped windows
    for _ in range(20):
        d.observe(5, 5)  # copied text: everything accepted
    window, qs = d.propose(seq, 5)
    assert window == [4, 5, 6, 7, 1] and qs is None  # a deterministic draft: one-hot, built only for sampling
    assert (sp.one_hot(window, 64).argmax(1) == window).all() and sp.one_hot(window, 64).sum() == 5
    fixed = sp.LookupDrafter(64, adaptive=False)
    for _ in range(6):
        fixed.observe(5, 0)
    assert fixed.propose(seq, 5)[0] == [4, 5, 6, 7, 1]
    with pytest.raises(ValueError, match="adaptive"):
        Spec("lookup", adaptive="yes")


def test_acceptance_is_counted_apart_at_a_windows_first_token_and_past_it():
    """A drafter whose windows fail at the first token half the time but, once started, hold (prompt lookup
    copying a run of code) keeps windows that one pooled rate would cut short: Acceptance counts the first position
    and the later ones apart (a later position is tried only after the ones before it held), and best_window
    prices each later token at the later rate."""
    a = sp.Acceptance(prior=0.6, decay=1.0)
    assert a.rates() == (0.6, 0.6)  # the prior alone
    a.observe(5, 0)  # rejected at the first token: no later position tried
    a.observe(5, 5)  # all five held: first + four later tries, all hits
    a.observe(4, 2)  # two held, the third failed: first hit, later 2 tries 1 hit
    a.observe(0, 0)  # nothing proposed: nothing counted
    first, later = a.rates()
    assert first == pytest.approx((2 + 1.2) / (3 + 2)) and later == pytest.approx((4 + 1 + 1.2) / (4 + 2 + 2))
    a.recover(0.5)
    assert a.counts == pytest.approx([1.0, 1.5, 2.5, 3.0])
    assert sp.best_window(8, 0.5, cost=0.25, later=0.5) == 1  # one rate: the first token alone pays
    assert sp.best_window(8, 0.5, cost=0.25, later=0.95) >= 6  # once started, copied text keeps going
    assert sp.best_window(8, 0.5, cost=0.25, later=None) == sp.best_window(8, 0.5, cost=0.25, later=0.5)
    seq = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    pooled, split = sp.LookupDrafter(64, cost=0.25), sp.LookupDrafter(64, cost=0.25)
    for _ in range(10):  # half the windows fail at once, the others hold to the end
        split.observe(6, 0), split.observe(6, 6)
    assert split.accepted.pooled() == pytest.approx(sum(split.accepted.counts[::2] + [1.2])
                                                     / sum(split.accepted.counts[1::2] + [2]))
    pooled.accepted.rates = lambda: (split.accepted.pooled(),) * 2  # the same rounds counted as one rate
    assert len(split.propose(seq, 6)[0]) == 6 > len(pooled.propose(seq, 6)[0])


def test_lookup_assumes_copied_words_hold_once_a_window_started():
    """Prompt lookup's later words start from their own prior (LOOKUP_LATER_PRIOR, above the first word's): once a
    copied run held, its windows grow after one or two rounds instead of staying at two words while the evidence
    builds up (a code edit decoded two words a call before: scripts/replay_window_policy.py)."""
    a = sp.Acceptance(prior=0.6, decay=1.0, later_prior=0.9)
    assert a.rates() == (0.6, 0.9)
    a.observe(3, 3)
    assert a.rates() == (pytest.approx(1.2 / 3 + 1 / 3), pytest.approx((2 + 1.8) / 4))
    assert sp.LOOKUP_LATER_PRIOR > sp.LOOKUP_PRIOR
    table = (0.12, 0.3, 0.71, 0.96, 1.18, 1.5, 1.8, 2.04)  # SmolLM2's native calls at two threads (AVX-512)
    seq = list(range(1, 20)) + [1, 2, 3]
    lengths = []
    for later in (sp.LOOKUP_PRIOR, sp.LOOKUP_LATER_PRIOR):
        d = sp.LookupDrafter(64, cost=0.3, costs=table)
        d.accepted.later_prior = later
        d.observe(2, 2)  # one short window held whole
        lengths.append(len(d.propose(seq, 8)[0]))
    assert lengths[0] == 2 < lengths[1]


def test_lookup_windows_follow_the_targets_own_verify_cost(soft_pair):
    """A backend that declares what verifying a draft token costs it (verify_cost, in plain steps) gets windows
    sized for that price: free verification drafts every time a suffix recurs, a prohibitive one never (plain
    steps), the output unchanged; a missing or nonsensical value falls back to the engine's VERIFY_COST."""
    class Priced:
        def __init__(self, cost):
            self.verify_cost = cost

    assert sp.verify_cost(Priced(0.25)) == 0.25 and sp.verify_cost(object()) == sp.VERIFY_COST
    for bad in (-1, 11, float("nan"), True, "0.3", None):
        assert sp.verify_cost(Priced(bad)) == sp.VERIFY_COST
    seq = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    assert sp.LookupDrafter(64, cost=0.0).propose(seq, 5)[0] == [4, 5, 6, 7, 1]  # the prior, free verification
    assert sp.LookupDrafter(64, cost=10.0).propose(seq, 5) == ([], None)
    target, _, _ = soft_pair
    T = TorchLM(target)
    prompt, opts = [3, 9, 27, 3, 9, 27, 3], sp.GenerationOptions(max_new_tokens=30)
    plain = [t.id for t in sp.plain(T, prompt, opts)]
    drafted = {}
    for cost in (0.0, 10.0):
        T.verify_cost = cost
        stats = sp.DecodeStats()
        assert [t.id for t in sp.lookup(T, prompt, opts, Spec("lookup", gamma=4), stats)] == plain
        drafted[cost] = stats.draft_calls
    del T.verify_cost
    assert drafted[0.0] > 0 and drafted[10.0] == 0


def test_windows_are_priced_by_the_targets_table_where_it_has_one(soft_pair):
    """A target whose calls cost what their tiles cost (verify_costs: what k = 1, 2, ... draft tokens add to a step)
    gets windows sized by that table: a window that fills a tile is cheap and the token after it dear, so the best
    window is longer than one price per token allows while the tile has room and stops at its edge where that price
    would go past it; past the table each token costs verify_cost. A malformed table is ignored (one price per
    token), and the output never changes."""
    tiles = (0.1, 0.2, 0.35, 0.85, 1.1)  # tokens 1-3 ride in one tile, the 4th starts another
    assert sp.best_window(8, 0.6, cost=0.3, later=0.6) == 1  # a chat-like draft, one price per token
    assert sp.best_window(8, 0.6, cost=0.3, later=0.6, costs=tiles) == 2  # the tile makes a second token cheap
    assert sp.best_window(8, 0.7, cost=0.3, later=0.9) == 4
    assert sp.best_window(8, 0.7, cost=0.3, later=0.9, costs=tiles) == 3  # stops at the tile's edge
    assert sp.best_window(8, 0.7, cost=0.3, later=0.9, costs=(0.1, 0.2, 0.3, 0.4, 0.5)) == 5  # no edge there
    assert sp.best_window(8, 0.7, cost=0.0, later=0.9, costs=(0.1,)) == 8  # past the table: verify_cost each
    assert sp.best_window(8, 0.7, cost=5.0, later=0.99, costs=(0.1, 0.1, 0.1)) == 3
    assert sp.best_window(8, 0.05, cost=0.3, costs=tiles) == 0  # nothing pays for a hopeless draft

    class Tabled:
        def __init__(self, costs):
            self.verify_costs = costs

    assert sp.verify_costs(Tabled(tiles)) == tiles and sp.verify_costs(object()) is None
    for bad in ([0.1, 0.2], (), (0.3, 0.2), (0.1, float("nan")), (0.1, 11.0), (True,), ("0.1",), tuple([0.1] * 17)):
        assert sp.verify_costs(Tabled(bad)) is None
    seq = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]  # lookup proposes [4, 5, 6, 7, 1]
    tabled, linear = sp.LookupDrafter(64, cost=0.3, costs=tiles), sp.LookupDrafter(64, cost=0.3)
    for _ in range(10):  # copied text: every window held
        tabled.observe(5, 5), linear.observe(5, 5)
    assert tabled.propose(seq, 5)[0] == [4, 5, 6] and linear.propose(seq, 5)[0] == [4, 5, 6, 7, 1]
    target, _, _ = soft_pair
    T = TorchLM(target)
    prompt, opts = [3, 9, 27, 3, 9, 27, 3], sp.GenerationOptions(max_new_tokens=30)
    plain = [t.id for t in sp.plain(T, prompt, opts)]
    T.verify_costs = tiles
    assert [t.id for t in sp.lookup(T, prompt, opts, Spec("lookup", gamma=4))] == plain
    del T.verify_costs


def test_adaptive_lookup_is_reproducible_for_a_seed(soft_pair):
    """Window lengths depend on acceptances, never on timings: a seeded sampling run repeats exactly."""
    target, _, _ = soft_pair
    T = TorchLM(target)
    opts = sp.GenerationOptions(max_new_tokens=40, temperature=1.0, seed=7)
    runs = [[t.id for t in sp.lookup(T, [3, 9, 27, 3, 9, 27, 3], opts, Spec("lookup", gamma=5))] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 40


def test_verify_rule_matches_target_distribution():
    """The rejection rule alone, many draws: the first emitted token is distributed as p[0]."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(V) * 0.3, size=3)
    q = rng.dirichlet(np.ones(V) * 0.3, size=2)
    counts = np.zeros(V)
    for _ in range(20000):
        d = [int(rng.choice(V, p=q[0])), int(rng.choice(V, p=q[1]))]
        n_acc, extra = sp.verify(p, q, d, rng)
        counts[d[0] if n_acc >= 1 else extra] += 1
    assert _chi2_pvalue(counts, p[0]) > 1e-3


def test_mirror_with_a_trained_exit_head_is_lossless(pair, tmp_path):
    from heron.models.lm import early_exit
    target, _, folder = pair
    ids = np.random.default_rng(0).integers(0, V, 4000).astype(np.int32)
    head = early_exit.train_exit_head(target, ids, layer=2, steps=5, seq_len=16, batch=2)
    vocab = vocabulary_record(V)
    early_exit.save(head, tmp_path, vocab)
    head = early_exit.load(tmp_path, target, vocab)
    assert head.layer == 2 and early_exit.load(tmp_path / "none", target, vocab) is None
    with pytest.raises(ValueError, match=r"^the exit head \(.*\): 32 logits; the target: 49152 logits: it was made"):
        early_exit.load(tmp_path, target, vocabulary_record(49152))
    T, D = TorchLM(target, exit_head=head), OnnxLM(folder)
    opts = sp.GenerationOptions(max_new_tokens=24)
    for prompt in PROMPTS[:4]:
        ref = [t.id for t in sp.plain(TorchLM(target), prompt, opts)]
        assert [t.id for t in ms.mirror(T, D, prompt, opts, Spec("mirror", gamma=4, exit_layer=2))] == ref


def test_mirror_is_reproducible_for_a_seed_at_any_temperature(soft_pair):
    """The draft thread builds however many branches it has time for; its draws are keyed by sequence
    position, so the output for a seed must not depend on that timing (5 runs used to give 5 outputs)."""
    target, _, folder = soft_pair
    T, D = TorchLM(target), OnnxLM(folder)
    opts = sp.GenerationOptions(max_new_tokens=40, temperature=0.9, seed=7)
    runs = set()
    for budget_sleep in (0.0, 0.002, 0.0, 0.004, 0.0):
        slow = D if budget_sleep == 0 else _Slow(D, budget_sleep)
        runs.add(tuple(t.id for t in ms.mirror(T, slow, [3, 4], opts, Spec("mirror", gamma=4, kappa=2, exit_layer=1))))
    assert len(runs) == 1
    other = tuple(t.id for t in ms.mirror(T, D, [3, 4], sp.GenerationOptions(max_new_tokens=40, temperature=0.9, seed=8),
                                          Spec("mirror", gamma=4, kappa=2, exit_layer=1)))
    assert other not in runs  # the seed matters


def test_round_prices_are_measured_rounds_over_a_plain_step_mixed_with_the_table():
    """RoundPrices: a window's price is its rounds' mean time over a plain step's, less one, weighed against the
    table's prior; nothing is measured before PRICE_PLAIN_STEPS plain steps (it asks for them), a window length not
    timed lately drifts back to the prior, a plain step is asked for again every PRICE_REFRESH rounds, and times
    that are not positive finite numbers are ignored."""
    r = sp.RoundPrices(clock=lambda: 0.0, n=4)
    prior = [0.1, 0.2, 0.3, 0.4]
    assert r.wants_plain()
    r.record("head", 2, 2.0)
    np.testing.assert_allclose(r.prices("head", prior), prior)  # no plain step timed yet: the table
    for _ in range(sp.PRICE_PLAIN_STEPS):
        r.record(None, 0, 1.0)
    assert not r.wants_plain()
    for _ in range(300):
        r.record("head", 2, 2.0)  # a two-word window costs two plain steps: it adds 1.0
    got = r.prices("head", prior)
    assert 0.9 < got[1] < 1.0  # the measurement, its decayed weight (~50 rounds) against the prior's 4
    np.testing.assert_allclose(got[[0, 2, 3]], [0.1, 0.3, 0.4])  # never timed: the prior
    np.testing.assert_allclose(r.prices("lookup", prior), prior)  # another source: its own rounds
    assert r.wants_plain() and not r.wants_plain(refresh=False)  # PRICE_REFRESH rounds without a plain step
    for _ in range(100):
        r.record(None, 0, 1.0)
    assert 0.25 < r.prices("head", prior)[1] < 0.85  # not timed for 100 plain steps: on its way back to the prior
    for _ in range(300):
        r.record(None, 0, 1.0)
    assert abs(r.prices("head", prior)[1] - 0.2) < 0.01  # ... and back
    before = r.prices("head", prior)
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        r.record("head", 2, bad), r.record(None, 0, bad)
    np.testing.assert_allclose(r.prices("head", prior), before)
    r.record("head", 9, 5.0)  # past its table: ignored
    np.testing.assert_allclose(r.prices("head", prior), before)
    spiky = sp.RoundPrices(n=4)
    for _ in range(sp.PRICE_PLAIN_STEPS):
        spiky.record(None, 0, 1.0)
    spiky.record(None, 0, 100.0)  # a pause: counts as PRICE_SPIKE times the mean so far
    assert spiky.plain[0] / spiky.plain[1] < 1.1
    spiky.record("head", 1, 50.0)  # the first round of a window: at most 1.5 + k / 2 plain steps
    assert 1.9 < spiky.measured("head", 0.5)[1] < 2.1


def test_greedy_windows_can_be_priced_by_timing_their_rounds(soft_pair, monkeypatch):
    """With MEASURED_PRICES greedy decoding prices its windows by what their rounds take: on a target whose table
    says verification is free, lookup drafts where verifying costs little in use and nearly stops where each verified
    word costs three steps (with the table alone, the default, it drafts as much there), the output plain decoding's
    either way; the prices stay on the target for its later answers. The prompt's own call is not timed as a plain
    step."""
    target, _, _ = soft_pair
    prompt, opts = [3, 9, 27, 3, 9, 27, 3, 9, 27, 3], sp.GenerationOptions(max_new_tokens=40, stop_at_eot=False)
    ref = [t.id for t in sp.plain(TorchLM(target), prompt, opts)]
    drafted = {}
    for extra, measured in ((0.02, True), (3.0, True), (3.0, False)):
        monkeypatch.setattr(sp, "MEASURED_PRICES", measured)
        T = Clocked(TorchLM(target), extra)
        T.verify_cost = 0.0
        for _ in range(3):
            stats = sp.DecodeStats()
            assert [t.id for t in sp.lookup(T, prompt, opts, Spec("lookup", gamma=4), stats)] == ref
        drafted[extra, measured] = stats.draft_calls  # the third answer's
        if measured:
            assert T.round_prices.plain_steps >= sp.PRICE_PLAIN_STEPS
            assert T.round_prices.plain[0] / T.round_prices.plain[1] == pytest.approx(1.0)  # one-token calls, no prompt
        else:
            assert T.round_prices.plain_steps == 0
    assert drafted[0.02, True] >= 20, drafted
    assert drafted[3.0, False] >= 20 and drafted[3.0, True] <= drafted[3.0, False] // 3, drafted


def test_sampling_keeps_the_tables_prices_and_its_seeded_words(soft_pair, monkeypatch):
    """Sampling never times its rounds, even with MEASURED_PRICES: a seeded run draws the same words on a target whose
    verification is cheap and on one where it is dear."""
    monkeypatch.setattr(sp, "MEASURED_PRICES", True)
    target, _, _ = soft_pair
    opts = sp.GenerationOptions(max_new_tokens=30, temperature=1.0, seed=3, stop_at_eot=False)
    runs = []
    for extra in (0.02, 3.0):
        T = Clocked(TorchLM(target), extra)
        runs.append([t.id for t in sp.lookup(T, [3, 9, 27, 3, 9, 27, 3], opts, Spec("lookup", gamma=4))])
        assert T.round_prices.plain_steps == 0 and not T.round_prices.rounds
    assert runs[0] == runs[1] and len(runs[0]) == 30


class _Slow:
    """A draft whose forward passes take longer, so fewer Mirror branches finish per round."""

    def __init__(self, backend, sleep_s):
        self.b, self.sleep_s = backend, sleep_s

    def __getattr__(self, name):
        return getattr(self.b, name)

    def forward(self, tokens, last=None):
        import time
        time.sleep(self.sleep_s)
        return self.b.forward(tokens, last=last)


class _SlowTarget:
    """A target whose forward takes longer (a slow accelerator), so the draft thread can finish a branch beside it;
    no early-exit split (prefix/suffix), as an onnxruntime target."""

    def __init__(self, backend, sleep_s):
        self.b, self.sleep_s = backend, sleep_s

    def __getattr__(self, name):
        if name in ("prefix", "suffix"):
            raise AttributeError(name)
        return getattr(self.b, name)

    def forward(self, tokens, last=None):
        import time
        time.sleep(self.sleep_s)
        return self.b.forward(tokens, last=last)


def _mirror_reuse(torch_target, make_target, draft, prompts, max_new_tokens: int, fixed_windows: bool = True,
                  windows: list | None = None) -> tuple[int, int]:
    """Mirror-SD with kappa 0 on each prompt (a fresh target from make_target), its tokens asserted to be plain
    decoding's: -> (branches reused, rounds that built their next window again); `windows` collects the windows."""
    opts = sp.GenerationOptions(max_new_tokens=max_new_tokens)
    hits = misses = 0
    for prompt in prompts:
        ref = [t.id for t in sp.plain(TorchLM(torch_target), prompt, opts)]
        st = sp.DecodeStats()
        spec = Spec("mirror", gamma=4, kappa=0, fixed_windows=fixed_windows)
        got = [t.id for t in ms.mirror(make_target(), draft, prompt, opts, spec, stats=st)]
        assert got == ref
        hits, misses = hits + st.branch_hits, misses + st.branch_misses
        if windows is not None:
            windows += st.windows
    return hits, misses


def test_mirror_builds_the_drafts_own_continuation_beside_the_target(pair, tmp_path):
    """A draft that agrees with the target (its own export): nearly every round accepts the whole window, and the
    branch the draft thread builds while the target verifies (the window's own continuation after the draft's
    likeliest next word, its guess of the bonus word) is the next window. kappa 0 builds only that branch, so the
    target needs no early exit: an onnxruntime target runs it; kappa >= 1 still needs the split. Lossless."""
    target = pair[0]
    same = OnnxLM(write_bundle(target, tmp_path / "same"))
    opts = sp.GenerationOptions(max_new_tokens=40)
    hits, misses = _mirror_reuse(target, lambda: _SlowTarget(OnnxLM(tmp_path / "same"), 0.02), same, PROMPTS[:4], 40)
    assert hits > 3 * misses, (hits, misses)  # without the own branch kappa 0 builds nothing: no hits at all
    with pytest.raises(ValueError, match="early-exit split .prefix/suffix. for kappa 2"):
        list(ms.mirror(OnnxLM(tmp_path / "same"), same, [1], opts, Spec("mirror", gamma=4, kappa=2)))
    # the default (kappa None): no exit head trained for the exit layer -> 0, so this target needs no split either
    assert [t.id for t in ms.mirror(OnnxLM(tmp_path / "same"), same, PROMPTS[1], opts, Spec("mirror", gamma=4))] == \
        [t.id for t in sp.plain(TorchLM(target), PROMPTS[1], opts)]
    with pytest.raises(ValueError, match="kappa must be an integer >= 0"):
        Spec("mirror", kappa=-1)


def test_mirror_windows_are_what_the_draft_wrote_while_the_target_verified(pair, tmp_path):
    """Greedy with kappa 0 the draft never pauses: it keeps writing its continuation while the target verifies, and
    each window is what it has written by then (at least a quarter of gamma, at most gamma). A draft much faster than
    the target's verify: full windows, nearly always reused. A draft slower than it: the target does not wait for a
    whole window, so windows shorter than gamma are verified. fixed_windows: every window is gamma. Lossless."""
    target = pair[0]
    same = OnnxLM(write_bundle(target, tmp_path / "same"))
    fast_draft = []
    hits, misses = _mirror_reuse(target, lambda: _SlowTarget(OnnxLM(tmp_path / "same"), 0.05), same, PROMPTS[:3], 30,
                                 fixed_windows=False, windows=fast_draft)
    assert hits > 3 * misses, (hits, misses)
    assert fast_draft.count(4) > 0.6 * len(fast_draft), fast_draft
    slow_draft = []
    _mirror_reuse(target, lambda: OnnxLM(tmp_path / "same"), _Slow(same, 0.01), PROMPTS[:3], 30, fixed_windows=False,
                  windows=slow_draft)
    assert min(slow_draft) >= 1 and any(w < 4 for w in slow_draft), slow_draft  # ceil(4 / AHEAD_LEAST) = 1
    fixed = []
    _mirror_reuse(target, lambda: OnnxLM(tmp_path / "same"), _Slow(same, 0.01), PROMPTS[:3], 30, windows=fixed)
    assert set(fixed) == {4}, fixed
    with pytest.raises(ValueError, match="fixed_windows must be True or False"):
        Spec("mirror", fixed_windows="yes")
    with pytest.raises(ValueError, match="fixed_windows applies to method 'mirror' only"):
        Spec("draft", fixed_windows=True)


def test_mirror_stopped_early_ends_the_drafts_thread_before_its_cache_is_used_again(pair, tmp_path):
    """A caller that stops reading (a chat UI's stop button) closes the generator while the draft is writing ahead:
    the draft's thread ends before the next generation resets and uses the same draft, which then decodes exactly."""
    target = pair[0]
    same = OnnxLM(write_bundle(target, tmp_path / "same"))
    opts = sp.GenerationOptions(max_new_tokens=30)
    T = _SlowTarget(OnnxLM(tmp_path / "same"), 0.02)
    gen = ms.mirror(T, same, PROMPTS[2], opts, Spec("mirror", gamma=4))
    first = [next(gen).id for _ in range(5)]
    gen.close()
    ref = [t.id for t in sp.plain(TorchLM(target), PROMPTS[2], opts)]
    assert first == ref[:5]
    for prompt in PROMPTS[3:6]:
        want = [t.id for t in sp.plain(TorchLM(target), prompt, opts)]
        assert [t.id for t in ms.mirror(T, same, prompt, opts, Spec("mirror", gamma=4))] == want


def test_mirror_finishes_the_own_continuation_when_the_whole_window_was_accepted(pair, tmp_path):
    """A draft slower than the target's verification (SmolLM2's int8 graph beside its int8x2 target): the own
    continuation is still being built when the target is done. After a round that accepted every draft word it is
    the likeliest next window, so it is finished, not dropped and built again serially (BENCHMARKS.md "Mirror-SD: the
    own continuation finished"); after a rejection it is dropped. Lossless."""
    target = pair[0]
    same = OnnxLM(write_bundle(target, tmp_path / "same"))
    hits, misses = _mirror_reuse(target, lambda: OnnxLM(tmp_path / "same"), _Slow(same, 0.01), PROMPTS[:3], 30)
    assert hits > 3 * misses, (hits, misses)  # dropped at the target's end, it was never reused: 0 hits


def test_a_draft_with_another_tokenizer_is_refused_naming_both():
    tokenizers = pytest.importorskip("tokenizers")

    def tok(words):
        return tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="a"))

    a, b = vocabulary_record(3, tok(["a", "b", "c"])), vocabulary_record(3, tok(["a", "c", "b"]))  # other ids
    require_same_vocabulary("draft", a, "target", vocabulary_record(3, tok(["a", "b", "c"])))  # the same table
    require_same_vocabulary("draft", a, "target", vocabulary_record(3))  # a target without a tokenizer: ids only
    with pytest.raises(ValueError, match=r"^draft: 3 logits, a tokenizer of 3 tokens \(sha256 [0-9a-f]{12}\); "
                                         r"target: 3 logits, a tokenizer of 3 tokens \(sha256 [0-9a-f]{12}\): it was"):
        require_same_vocabulary("draft", a, "target", b)
    with pytest.raises(ValueError, match=r"^draft: 4096 logits; target: 49152 logits: it was made for another"):
        require_same_vocabulary("draft", vocabulary_record(4096), "target", vocabulary_record(49152))
    for bad in ({}, {"logits": "3"}, {"logits": 3, "sha256": 7}, None):
        with pytest.raises(ValueError, match="draft: its vocabulary record is malformed"):
            require_same_vocabulary("draft", bad, "target", a)


def test_lm_bench_repeats_every_method_and_reports_the_spread():
    """`heron lm bench`: every method runs `repeats` times, interleaved; tokens/s is the median with min and
    max beside it (one loaded run once reported a "24.5x" speed-up)."""
    from heron.bench_lm import BenchOptions, run

    o = BenchOptions(prompts=2, new_tokens=8, threads=1, methods=("none", "lookup"), repeats=2, decode_preset="tiny")
    log = []
    report = run(None, o, log=log.append)
    assert [r["method"] for r in report["rows"]] == ["none", "lookup"]
    assert sum("run 2 of 2" in line for line in log) == 2
    for r in report["rows"]:
        assert r["repeats"] == 2 and r["lossless"]
        assert r["tokens_per_s_min"] <= r["tokens_per_s"] <= r["tokens_per_s_max"]


def test_greedy_verification_from_the_logits_alone_is_the_rejection_rule_at_temperature_0():
    """verify_greedy (argmax of the target's logits) keeps and replaces exactly the words probs() + verify() would,
    ties included, for drafts right everywhere, nowhere and in between."""
    rng = np.random.default_rng(3)
    for trial in range(300):
        T, V = int(rng.integers(2, 9)), 50
        logits = rng.integers(-3, 4, (T, V)).astype(np.float32)  # small integers: ties are common
        best = logits.argmax(-1)
        draft = [int(b) for b in best[:T - 1]]
        cut = int(rng.integers(0, T))
        if cut < T - 1:
            draft[cut] = (draft[cut] + 1 + int(rng.integers(0, V - 1))) % V
        a, b = sp.DecodeStats(), sp.DecodeStats()
        want = sp.verify(sp.probs(logits, 0.0, 1.0), sp.one_hot(draft, V), draft, np.random.default_rng(trial), a)
        assert sp.verify_greedy(logits, draft, b) == want
        assert (a.position_hits, a.position_tries) == (b.position_hits, b.position_tries)


@pytest.mark.parametrize("sampler", ["numpy", "auto"])
def test_draw_is_what_choice_draws_from_the_same_uniform(sampler, monkeypatch):
    """draw() skips rng.choice's checks, not its draw: the same id from the same seed, zeros and all (a distribution
    of mostly zeros, as a top-p nucleus or a residual, summed over its other words only; zeros at the edges), with
    numpy's sampler and with the native library's where it is built; a certain word spends no uniform."""
    monkeypatch.setattr(sp, "SAMPLER", sampler)
    rng = np.random.default_rng(7)
    for trial in range(400):
        n = int(rng.integers(2, 3000))
        p = rng.random(n) ** rng.uniform(0.5, 8)
        if trial % 3:
            p[rng.random(n) < (0.5 if trial % 3 == 1 else 0.99)] = 0.0
            p[rng.integers(0, n)] += 0.01  # not all zero
        if trial % 5 == 0:
            p[:3] = p[-3:] = 0.0
            p[n // 2] += 0.01
        p /= p.sum()
        seed = int(rng.integers(0, 1 << 30))
        assert sp.draw(p, np.random.default_rng(seed)) == int(np.random.default_rng(seed).choice(n, p=p))
    one = np.zeros(9)
    one[4] = 1.0
    r = np.random.default_rng(3)
    assert sp.draw(one, r) == 4
    assert r.random() == np.random.default_rng(3).random()  # no uniform spent on a certain word


def full_sort_keeps(p, top_p, top_k=0, min_p=0.0):
    """The words top-k, top-p (over top-k's mass where set) and min-p keep, by a full stable sort of every word."""
    order = np.argsort(-p, kind="stable")
    sp_ = p[order]
    k = top_k if 0 < top_k < len(p) else len(p)
    limit = top_p if k == len(p) else top_p * sp_[:k].sum()
    n = min(int(np.count_nonzero(np.cumsum(sp_) - sp_ < limit)), k, int(np.count_nonzero(sp_ >= min_p * p.max())))
    return order[:n]


def test_top_p_keeps_what_a_full_sort_keeps():
    """nucleus() sorts only the likeliest candidates, yet keeps the ids, in the order, that a full stable sort of
    every token keeps, ties included (ties broken by the lower id), with top-k and min-p beside top-p; probs() then
    renormalizes over them, row by row."""
    rng = np.random.default_rng(3)
    for trial in range(900):
        n = int(rng.integers(1, 3000))
        logits = rng.standard_normal(n) * rng.uniform(0.1, 30)
        if trial % 2:
            logits = np.round(logits, 1)  # many exact ties
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top_p = float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.999, 1 - 1e-12, 1.0]))
        top_k = int(rng.choice([0, 0, 1, 3, 40, 500, 5000])) if trial % 3 else 0
        min_p = float(rng.choice([0.0, 0.0, 0.01, 0.05, 0.3, 1e-6])) if trial % 3 else 0.0
        np.testing.assert_array_equal(sp.nucleus(p, top_p, top_k, min_p), full_sort_keeps(p, top_p, top_k, min_p))
    logits = rng.standard_normal((3, 500)) * 4
    for filters in ((0.9, 0, 0.0), (1.0, 20, 0.0), (1.0, 0, 0.05), (0.9, 20, 0.05)):
        q = sp.probs(logits, 0.8, *filters)
        for row, lg in zip(q, logits):
            keep = full_sort_keeps(sp.probs(lg, 0.8), *filters)
            assert set(np.flatnonzero(row)) == set(keep.tolist())
            assert row.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        sp.GenerationOptions(temperature=0.8, top_k=-1)
    with pytest.raises(ValueError, match="min_p must be in"):
        sp.GenerationOptions(temperature=0.8, min_p=1.0)


@pytest.mark.parametrize("sampler", ["numpy", "auto"])
def test_the_heads_sampled_words_are_those_drawn_over_the_whole_vocabulary(sampler, monkeypatch):
    """The draft head draws each word over its own rows taken in id order: the word and the distribution that a draw
    over the whole vocabulary (its other words at probability 0) gives from the same uniforms, top-p or not; with
    numpy's sampler and with the native library's where it is built (float32 logits)."""
    from heron.runtime.draft_head import HeadDrafter

    monkeypatch.setattr(sp, "SAMPLER", sampler)

    V, g = 300, 5
    words = np.random.default_rng(5).permutation(V)[:40]  # the head's rows: part of the vocabulary, not in id order

    class Head:
        stream_layers = ()

        def __init__(self):
            self.words = words

        def step(self, hidden, token, streams=None):
            logits = np.sin(np.arange(len(words)) * (token + 1) + hidden[0]) * 4
            return logits.astype(np.float32), hidden + 1.0

    class Target:
        vocab_size = V

    for top_p in (1.0, 0.9):
        opts = sp.GenerationOptions(temperature=0.8, top_p=top_p)
        drafter = HeadDrafter(Target(), Head(), opts, sp.DraftSeeds(0))
        for seed in range(20):
            got, qs = drafter._sampled(np.zeros(4), 7, g, None, np.random.default_rng(seed))
            rng, hidden, token = np.random.default_rng(seed), np.zeros(4), 7
            for i in range(g):
                logits, hidden = Head().step(hidden, token)
                full = np.full(V, -np.inf, np.float32)
                full[words] = logits
                q = sp.probs(full, 0.8, top_p)
                token = int(rng.choice(V, p=q))
                assert got[i] == token
                np.testing.assert_allclose(qs[i], q, rtol=1e-12, atol=1e-15)


def test_verify_reads_only_the_target_rows_it_needs():
    """TargetRows computes a verify call's distributions row by row as verify() reads them: the same outcome as every
    row computed at once, and a window rejected at its first word computes one row."""
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((5, 50)) * 3
    for seed in range(30):
        draft = [int(x) for x in rng.integers(0, 50, 4)]
        q = sp.probs(rng.standard_normal((4, 50)) * 3, 0.8, 1.0)
        rows = sp.TargetRows(logits, (0.8, 0.95))
        lazy = sp.verify(rows, q, draft, np.random.default_rng(seed))
        assert lazy == sp.verify(sp.probs(logits, 0.8, 0.95), q, draft, np.random.default_rng(seed))
        assert len(rows._rows) == min(lazy[0] + 1, len(draft) + 1)
