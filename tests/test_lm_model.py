"""heron's LM: cache semantics, dial-k, Roster of Experts, generation, checkpoints and bad input."""
import json

import pytest

torch = pytest.importorskip("torch")

from heron.models.lm import checkpoint, corpus  # noqa: E402
from heron.models.lm.backend import TorchLM  # noqa: E402
from heron.models.lm.roe import default_roe_tau, roe_flops_per_token  # noqa: E402
from heron.runtime.decoding import GenerationOptions, plain  # noqa: E402

from heron.models.lm.model import PRESETS, KVCache, Routing, Transformer, preset  # noqa: E402
from heron.models.lm.tokenizer import Tokenizer  # noqa: E402
from heron.models.lm.train import TrainOptions, perplexity, sample_k, train, windows  # noqa: E402


def generate(model, prompt, opts, routing=None):
    """Plain decoding through the one engine over the torch backend."""
    return plain(TorchLM(model, routing=routing), prompt, opts)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Transformer(preset("tiny", n_layers=3, max_seq_len=64)).eval()


def tokens(n=12, b=2, seed=1):
    return torch.randint(0, 4096, (b, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_cached_blocks_equal_whole_sequence(tiny):
    x = tokens()
    full = tiny(x).logits
    cache = KVCache(tiny.cfg, batch=2)
    parts = [tiny(x[:, :5], cache).logits] + [tiny(x[:, i:i + 1], cache).logits for i in range(5, 12)]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


@torch.no_grad()
def test_cache_grows_in_steps_to_what_the_sequence_needs(tiny, monkeypatch):
    monkeypatch.setattr(KVCache, "GROW", 4)
    x = tokens(n=12)
    full = tiny(x).logits
    cache = KVCache(tiny.cfg, batch=2, max_len=20)
    assert cache.capacity == 4
    parts = [tiny(x[:, :3], cache).logits] + [tiny(x[:, i:i + 1], cache).logits for i in range(3, 10)]
    assert cache.capacity == 16  # 4 -> 8 -> 16: doubling ...
    parts.append(tiny(x[:, 10:12], cache).logits)
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
    cache.trim(3)
    tiny(tokens(n=11, seed=3), cache)  # ... but never past max_len (9 + 11 = 20)
    assert cache.capacity == 20 and cache.length == 20
    with pytest.raises(ValueError, match="cache holds 20 of 20"):
        tiny(tokens(n=1), cache)


@torch.no_grad()
def test_trim_rolls_back_exactly(tiny):
    x = tokens(b=1)
    cache = KVCache(tiny.cfg)
    tiny(x[:, :6], cache)
    ref = tiny(x[:, 6:9], cache).logits
    tiny(tokens(4, 1, seed=9), cache)  # a rejected draft of 4 tokens ...
    cache.trim(7)                      # ... rolled back together with the 3 tokens above
    assert cache.length == 6
    assert (tiny(x[:, 6:9], cache).logits - ref).abs().max() < 1e-6
    with pytest.raises(ValueError):
        cache.trim(100)


@torch.no_grad()
def test_hidden_states_and_early_exit(tiny):
    x = tokens()
    out = tiny(x).logits
    h1, _ = tiny.run_layers(tiny.embed(x), stop=1)  # an early exit: layer 0 only
    top, _ = tiny.run_layers(h1, start=1)  # the rest of the block
    assert torch.allclose(tiny.logits(top), out, atol=1e-5) and torch.allclose(tiny.head(top), out, atol=1e-5)
    assert torch.allclose(tiny.logits(top, last=2), out[:, -2:], atol=1e-5)
    with pytest.raises(ValueError, match="not a range"):
        tiny.run_layers(h1, start=3, stop=1)


@torch.no_grad()
def test_dial_k_changes_compute_and_validates(tiny):
    x = tokens()
    assert not torch.allclose(tiny(x, route=Routing(k=1)).logits, tiny(x, route=Routing(k=2)).logits)
    for bad in (0, 5):
        with pytest.raises(ValueError, match="k must be in"):
            tiny(x, route=Routing(k=bad))
    assert tiny.num_params(active=True, k=1) < tiny.num_params(active=True, k=2) < tiny.num_params()


@torch.no_grad()
def test_roe_samples_share_sample0_cache(tiny):
    """Whole-sequence RoE == token-by-token RoE with sample 0 alone writing the cache; sample 0 == plain."""
    x = tokens()
    route = Routing(roe_samples=3, roe_tau=(0.0, 0.5, 0.5), seed=3)
    whole = tiny(x, route=route).logits
    cache = KVCache(tiny.cfg, batch=2)
    steps = torch.cat([tiny(x[:, i:i + 1], cache, route).logits for i in range(12)], 1)
    assert (whole - steps).abs().max() < 1e-5
    assert torch.allclose(whole[:2], tiny(x).logits, atol=1e-5)
    assert (whole[2:] - whole[:2].repeat(2, 1, 1)).abs().max() > 1e-3  # the noisy samples really differ
    with pytest.raises(ValueError, match="roe_samples"):
        tiny(x, route=Routing(roe_samples=0))
    flops = [roe_flops_per_token(tiny, Routing(roe_samples=n, roe_tau=default_roe_tau(3))) for n in (1, 2, 4)]
    assert flops[0] < flops[1] < flops[2] < 4 * flops[0]  # shared lower layers make n samples cost < n x


def test_dial_k_schedule_anchors_at_the_end():
    import random
    opts = TrainOptions(steps=1000, anchor_frac=0.2, anchor_prob=0.8)
    rng = random.Random(0)
    early = [sample_k(s, opts, 2, 4, rng) for s in range(0, 800)]
    late = [sample_k(999, opts, 2, 4, rng) for _ in range(800)]
    assert set(early) == {2, 3, 4} and abs(early.count(2) / len(early) - 1 / 3) < 0.06
    assert abs(late.count(2) / len(late) - 0.8) < 0.06


@torch.no_grad()
def test_generation_greedy_is_deterministic_and_validates(tiny):
    opts = GenerationOptions(max_new_tokens=8)
    a = [t.id for t in generate(tiny, [5, 6, 7], opts)]
    b = [t.id for t in generate(tiny, [5, 6, 7], opts)]
    assert a == b and len(a) == 8
    # the engine's cache path gives the same tokens as recomputing the whole sequence each step
    seq = [5, 6, 7]
    for _ in range(8):
        seq.append(int(tiny(torch.tensor([seq])).logits[0, -1].argmax()))
    assert seq[3:] == a
    with pytest.raises(ValueError, match="empty prompt"):
        list(generate(tiny, [], opts))
    with pytest.raises(ValueError, match="context"):
        list(generate(tiny, list(range(64)), opts))
    with pytest.raises(ValueError):
        GenerationOptions(max_new_tokens=0)
    # generation stops (no error) when the context is full
    assert len(list(generate(tiny, list(range(60)), GenerationOptions(max_new_tokens=50)))) == 4


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert {"nano", "small", "base"} <= set(PRESETS)


def test_corpus_is_deterministic_with_held_out_split():
    docs = corpus.stdlib_documents()
    again = corpus.stdlib_documents()
    assert [d.name for d in docs] == [d.name for d in again]
    train_text, held = corpus.split(docs)
    assert held and len(held) < 0.1 * len(train_text)
    held_names = {d.name for d in docs if d.held_out}
    assert 0.02 < len(held_names) / len(docs) < 0.08


def test_a_small_corpus_never_evaluates_on_its_training_text():
    docs = [corpus.Document(f"user:{i}", f"document number {i}\n" * 20) for i in range(3)]
    assert not any(d.held_out for d in docs)  # these names hash into the training share
    train, held = corpus.split(docs)
    assert held == docs[-1].text and held not in train
    train, held = corpus.split(docs[:1])  # one document: its last tenth
    assert held and train + held == docs[0].text and len(held) < 0.2 * len(docs[0].text)


def test_prompts_and_options_are_checked_not_coerced(tmp_path):
    import heron
    from heron.runtime.decoding import GenerationOptions as G

    lm = heron.load_lm()
    for prompt in (b"Return", [1.7, 2.2], [True], [lm.backend.vocab_size], [-1], 42):
        with pytest.raises(ValueError, match="prompt|token ids"):
            list(lm.generate(prompt, G(max_new_tokens=2)))
    assert len(list(lm.generate([1, 2], G(max_new_tokens=2)))) == 2
    for bad in ({"temperature": True}, {"temperature": 1e-320}, {"top_p": True}):
        with pytest.raises(ValueError):
            G(**bad)
    with pytest.raises(ValueError, match="experts"):
        heron.load_lm(experts=True)
    # the window's default is the method's: 8 for the head (its prompt-lookup windows copy long runs), 4 otherwise
    assert heron.SpeculativeOptions("head").gamma == 8 and heron.SpeculativeOptions("lookup").gamma == 4
    assert heron.SpeculativeOptions("head", gamma=3).gamma == 3
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="gamma"):
            heron.SpeculativeOptions("head", gamma=bad)
    # an option that only another method reads is refused, not silently ignored
    for method, bad in (("lookup", {"head": "x"}), ("draft", {"adaptive": False}), ("head", {"kappa": 1}),
                        ("none", {"gamma": 3}), ("mirror", {"mtp": "x"}), ("mtp", {"draft": "x"})):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} applies to .*; the method is '{method}'"):
            heron.SpeculativeOptions(method, **bad)
    assert heron.SpeculativeOptions("mirror", kappa=0, draft="d", exit_layer=3).kappa == 0
    from heron.runtime.decoding import method_options
    assert method_options("lookup", kappa=1, draft="d", adaptive=False) == {"adaptive": False}
    assert method_options("mirror", kappa=1, draft="d", mtp=None) == {"kappa": 1, "draft": "d"}
    spec = heron.SpeculativeOptions("mirror", exit_head=str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="no exit head"):
        list(lm.generate("def f", G(max_new_tokens=2), speculative=spec))


def test_tokenizer_round_trips_any_text(tmp_path):
    tok = Tokenizer.train("def f(x):\n    return x + 1\n\n" * 50 + "naïve café", vocab_size=300)
    for s in ["print('héllo wörld') # ✓", "\x00\x01 tabs\tand\nnewlines", "日本語"]:
        assert tok.decode(tok.encode(s)) == s
    tok.save(tmp_path / "t.json")
    assert Tokenizer.load(tmp_path / "t.json").encode("return x") == tok.encode("return x")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError):
        Tokenizer.load(tmp_path / "bad.json")


def test_train_resume_checkpoint_and_corruption(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}" for i in range(400)))
    cfg = preset("tiny", n_layers=1, max_seq_len=64)
    opts = TrainOptions(steps=6, batch=4, seq_len=32, eval_every=3, eval_windows=4, threads=1)
    out = train(cfg, tmp_path / "run", opts, text_files=[str(text)], vocab_size=300, log=lambda *a: None)
    model, tok, meta = checkpoint.load(out)
    assert meta["steps"] == 6 and tok.vocab_size <= model.cfg.vocab_size
    # dial-k fine-tune from it
    train(cfg, tmp_path / "phds", TrainOptions(steps=3, batch=4, seq_len=32, eval_every=3, eval_windows=4,
                                               threads=1, phds=True), text_files=[str(text)],
          init=out, log=lambda *a: None)
    held = windows(torch.arange(200).numpy() % 50, 32, 4)
    assert perplexity(model, held) > 1
    # weight-only int8 release: a quarter of the size, nearly the same outputs
    small = checkpoint.save(tmp_path / "int8", model, tok, meta, int8=True)
    q, _, qmeta = checkpoint.load(small)
    assert "int8" in qmeta["weights"]
    assert (small / "model.safetensors").stat().st_size < 0.4 * (out / "model.safetensors").stat().st_size
    x = held[:2, :-1]
    with torch.no_grad():
        assert (q(x).logits - model(x).logits).abs().max() < 0.05 * model(x).logits.abs().max()
    # corrupt files are refused with a clear error
    (out / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        checkpoint.load(out)
    cfgdoc = json.loads((tmp_path / "phds" / "config.json").read_text())
    cfgdoc["config"]["dim"] = 32
    (tmp_path / "phds" / "config.json").write_text(json.dumps(cfgdoc))
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.load(tmp_path / "phds")
    with pytest.raises(ValueError, match="phds"):
        train(preset("tiny", n_experts=0), tmp_path / "dense", TrainOptions(steps=1, phds=True),
              text_files=[str(text)], vocab_size=300, log=lambda *a: None)


def test_the_cache_moves_its_own_offset():
    """The model reads the cache's length and never writes it: each layer writes its keys at the cache's
    offset, and the last layer's write moves it; an early exit below the last layer leaves it for the call
    that finishes the block; trim rewinds it."""
    torch.manual_seed(0)
    m = Transformer(preset("tiny", n_layers=2, vocab_size=64, max_seq_len=32)).eval()
    c = KVCache(m.cfg)
    with torch.no_grad():
        ref = m(torch.tensor([[1, 2, 3, 4, 5]])).logits
        m(torch.tensor([[1, 2, 3]]), c)
        assert c.length == 3
        h, _ = m.run_layers(m.embed(torch.tensor([[4, 5]])), c, stop=1)
        assert c.length == 3
        out = m.logits(m.run_layers(h, c, start=1)[0])
        assert c.length == 5 and torch.allclose(out, ref[:, 3:], atol=1e-5)
        c.trim(2)
        assert c.length == 3 and torch.allclose(m(torch.tensor([[4, 5]]), c).logits, ref[:, 3:], atol=1e-5)
