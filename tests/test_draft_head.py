"""The draft head on the target's own features (heron.models.lm.draft_head -> heron.export.draft_head ->
heron.runtime.draft_head), on a tiny Llama GGUF: trained on the target's own answers it learns to agree
with the target; the exported graph computes what the torch head computes; speculation with it returns
plain decoding's greedy tokens exactly while drafting; edited bundles and the wrong target are refused."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from conftest import Clocked, edit_manifest, write_tiny_llama  # noqa: E402
from heron.runtime.decoding import DecodeStats, GenerationOptions, plain  # noqa: E402
from heron.runtime.manifest import BundleError  # noqa: E402

PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7], [2, 7, 1, 8], [6, 6, 6], [1, 2, 3, 4, 5, 6, 7]]


def _graph_and_manifest(path, hidden=True, streams=True, shared=True):
    from heron.export.gguf_onnx import build_graph, default_feature_layers
    from heron.runtime.lm import FEATURES_OUTPUT, HIDDEN_OUTPUT, lm_manifest
    from heron.runtime.manifest import FileEntry, sha256_bytes, sha256_path

    layers = default_feature_layers(2) if streams else ()  # the tiny target's: (0,), as its bundles return
    model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=shared, feature_layers=layers)
    for name, keep in ((HIDDEN_OUTPUT, hidden), (FEATURES_OUTPUT, hidden and streams)):
        if not keep:  # a graph from before the hidden output (or the streams)
            for out in [o for o in model.graph.output if o.name == name]:
                model.graph.output.remove(out)
    graph = model.SerializeToString()
    source = {"gguf": path.name, "gguf_sha256": sha256_path(path), "feature_layers": list(layers)}
    manifest = lm_manifest(cfg, name="t", eot_id=None, source=source,
                           files={"model.int4.onnx": FileEntry("model.int4.onnx", sha256_bytes(graph), len(graph))})
    return graph, manifest


def _target(path, hidden=True, streams=True):
    from heron.runtime.lm import OnnxLM

    return OnnxLM.from_memory(*_graph_and_manifest(path, hidden, streams), source_file=path)


def _rule(x):
    return (5 * x + 3) % 64  # the synthetic target's next word


def _synthetic_answers(folder, n_answers=200, length=24, seed=0):
    """Answers in scripts/draft_head_data.py's format from a target whose next word is _rule(word) (90%): the
    head can only learn it from the word it is given (the features here are noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n_answers):
        toks = [int(rng.integers(0, 64))]
        for _ in range(length - 1):
            toks.append(int(_rule(toks[-1])))
        toks = np.asarray(toks, np.int32)
        others = (toks[:, None] + np.arange(1, 32)[None, :]) % 64
        top_ids = np.concatenate([toks[:, None], others], 1).astype(np.int32)
        top_lp = np.log(np.concatenate([np.full((length, 1), 0.9), np.full((length, 31), 0.1 / 31)], 1)).astype(np.float16)
        np.savez(folder / f"p{i:05d}.npz", prompt=np.zeros(1, np.int32), tokens=toks, top_ids=top_ids, top_logprobs=top_lp,
                 hidden=rng.standard_normal((length, 64)).astype(np.float16))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny target, a head trained on synthetic answers over its vocabulary, exported for that target."""
    from heron.export.draft_head import export_draft_head
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.models.lm import draft_head as dh
    from heron.runtime.gguf import GGUFFile

    root = tmp_path_factory.mktemp("head")
    path = write_tiny_llama(root / "t.gguf", np.random.default_rng(11), ("Q4_1", "Q8_0"))
    data = dh.load_data(_synthetic_answers(root / "data"))
    table = dequantized(read_blocks(GGUFFile(path), "token_embd.weight"))
    cfg = dh.DraftHeadConfig(dim=64, hidden=128, n_blocks=1, n_words=48)
    model, report = dh.train(data, table, cfg, dh.TrainOptions(steps=800, batch=128, lr=5e-3, threads=1),
                             log=lambda s: None)
    out = export_draft_head(model, path, root / "bundle", name="tiny-head", training={"report": report})
    inline = export_draft_head(model, path, root / "inline", name="tiny-head", rows_from_target=False)
    return {"path": path, "target": _target(path), "model": model, "report": report, "bundle": out, "data": data,
            "inline": inline}


def test_training_learns_the_targets_next_word(trained):
    """On held-out answers the trained head's first choice is mostly the target's (where the head's N = 48 of
    the 64 words allow: input and output among them), where the untrained head (the target's own distribution
    one position late) almost never is; chained from its own feature, the second word too."""
    from heron.models.lm import draft_head as dh

    r = trained["report"]
    m = trained["model"]
    fresh = dh.DraftHead(m.cfg, m.words, m.table, 64)
    before = dh.agreement(fresh, trained["data"], np.arange(len(trained["data"].x)))["top1_step1"]
    assert before < 0.1 and r["top1_step1"] > 0.6 and r["coverage"] > 0.6, (r, before)
    assert r["top1_step2"] > 0.45, r  # both words must be among the 48 (and the input word too, for step 1)
    assert r["val_answers"] == 10 and r["val_positions"] + r["train_positions"] == len(trained["data"].x)


def test_training_goes_on_from_an_earlier_head(trained):
    """--init: a briefly trained head goes on learning from where it stopped (its words kept); a head made for
    another target's rows is refused."""
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.models.lm import draft_head as dh
    from heron.runtime.gguf import GGUFFile

    table = dequantized(read_blocks(GGUFFile(trained["path"]), "token_embd.weight"))
    cfg = dh.DraftHeadConfig(dim=64, hidden=128, n_blocks=1, n_words=48)
    short, before = dh.train(trained["data"], table, cfg, dh.TrainOptions(steps=8, batch=128, lr=5e-3, threads=1),
                             log=lambda s: None)
    words = short.words.clone()
    cont, after = dh.train(trained["data"], table, dh.DraftHeadConfig(dim=64, n_words=48, n_blocks=3),
                           dh.TrainOptions(steps=400, batch=128, lr=5e-3, threads=1), log=lambda s: None, init=short)
    assert after["top1_step1"] > before["top1_step1"] + 0.1, (before, after)
    assert torch.equal(cont.words, words) and cont.cfg.n_blocks == 1  # the earlier head's words and blocks
    with pytest.raises(ValueError, match="another target"):
        dh.train(trained["data"], table + 1, cfg, dh.TrainOptions(steps=1, threads=1), log=lambda s: None, init=cont)


def test_the_models_own_answers_are_recorded_with_its_features(trained):
    """record_answer: the chosen words are the target's greedy words, each position's top-K starts with it, and
    the hidden state is the one that chose it (the tied table times it gives the target's logits)."""
    from heron.models.lm import draft_head as dh
    from heron.runtime.decoding import GenerationOptions

    target = trained["target"]
    rec = dh.record_answer(target, [3, 1, 4], 12, 0.0, np.random.default_rng(0))
    ref = [t.id for t in plain(target, [3, 1, 4], GenerationOptions(max_new_tokens=12, temperature=0.0))]
    assert rec["tokens"].tolist() == ref and (rec["top_ids"][:, 0] == rec["tokens"]).all()
    logits = rec["hidden"].astype(np.float32) @ trained["model"].table.numpy().T  # the head's rows: 48 of the words
    words = trained["model"].words.numpy()
    for i, t in enumerate(rec["tokens"]):
        if t in words:
            assert words[logits[i].argmax()] == t


def test_exported_graph_computes_the_torch_head(trained):
    from heron.runtime.draft_head import DraftHead

    head = DraftHead(trained["bundle"], target=trained["target"])
    model = trained["model"]
    rng = np.random.default_rng(1)
    h = rng.standard_normal((8, 64)).astype(np.float32)
    toks = rng.integers(0, 64, size=8)
    with torch.no_grad():
        f_ref, l_ref = model(torch.from_numpy(h), torch.from_numpy(toks))
    agree = 0
    for i in range(8):
        logits, feature = head.step(h[i], int(toks[i]))
        # 8-bit weights, activations rounded to int8 per block of 32 (onnxruntime's int8 kernel, as the target's)
        f, lr = f_ref[i].numpy(), l_ref[i].numpy()
        np.testing.assert_allclose(feature, f, atol=0.05 * float(np.abs(f).max()) + 0.05)
        np.testing.assert_allclose(logits, lr, atol=0.15 * float(np.abs(lr).max()) + 0.1)
        assert np.corrcoef(logits, lr)[0, 1] > 0.98
        agree += int(logits.argmax() == int(l_ref[i].argmax()))
    assert agree >= 6  # int8 weights and activations (kernels differ between CPUs): a near-tie may flip
    np.testing.assert_array_equal(head.words, model.words.numpy())


@pytest.mark.parametrize("gamma,adaptive", [(1, False), (3, False), (4, True)])
def test_speculation_with_the_head_equals_plain_decoding(trained, gamma, adaptive):
    from heron.runtime.draft_head import DraftHead, head_generate

    head, target = DraftHead(trained["bundle"], target=trained["target"]), trained["target"]
    opts = GenerationOptions(max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    drafted = 0
    for prompt in PROMPTS:
        ref = [t.id for t in plain(target, prompt, opts)]
        stats = DecodeStats()
        got = [t.id for t in head_generate(target, head, prompt, opts, gamma, stats, adaptive=adaptive)]
        assert got == ref, prompt
        drafted += sum(stats.windows)
    # windows were proposed and verified, not only plain steps (the adaptive window stops drafting where the head
    # is mostly wrong, as this head, trained on other answers, is on this target)
    assert drafted > (0 if adaptive else 20)


def test_prompt_lookup_first_then_the_head(trained, monkeypatch):
    """head_lookup: where the context repeats itself lookup's windows go first, the head drafts elsewhere; the
    tokens stay plain decoding's."""
    from heron.runtime.draft_head import DraftHead, HeadDrafter, head_generate

    head, target = DraftHead(trained["bundle"], target=trained["target"]), trained["target"]
    opts = GenerationOptions(max_new_tokens=24, temperature=0.0, stop_at_eot=False)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9, 2]
    ref = [t.id for t in plain(target, prompt, opts)]
    sources = []
    propose = HeadDrafter.propose

    def spy(self, seq, g):
        out = propose(self, seq, g)
        sources.append("lookup" if self._source == "lookup" else "head" if out[0] else "none")
        return out

    monkeypatch.setattr(HeadDrafter, "propose", spy)
    got = [t.id for t in head_generate(target, head, prompt, opts, 3, adaptive=False, lookup=True)]
    assert got == ref
    assert "lookup" in sources and "head" in sources, sources


@pytest.mark.parametrize("confident", [False, True])
def test_the_heads_windows_can_be_priced_by_timing_their_rounds(trained, confident, monkeypatch):
    """With decoding.MEASURED_PRICES, greedy head windows (sized by the acceptance of the rounds before, or by the
    head's own probabilities) follow what their rounds measure: on a target where each verified word costs three
    steps the head nearly stops drafting, where it costs little it goes on; the words are plain decoding's either
    way."""
    from heron.runtime import decoding
    from heron.runtime.draft_head import DraftHead, head_generate

    monkeypatch.setattr(decoding, "MEASURED_PRICES", True)
    head, target = DraftHead(trained["bundle"], target=trained["target"]), trained["target"]
    opts = GenerationOptions(max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    drafted = {}
    for extra in (0.02, 3.0):
        t = Clocked(target, extra)
        t.verify_cost = 0.0  # its table: verification free
        n = 0
        for _ in range(2):  # the second pass starts from the prices the first measured
            for prompt in PROMPTS:
                stats = DecodeStats()
                got = [x.id for x in head_generate(t, head, prompt, opts, 4, stats, lookup=False, confident=confident)]
                assert got == [x.id for x in plain(target, prompt, opts)], prompt
                n += sum(stats.windows)
        drafted[extra] = n
        assert t.round_prices.rounds["head"][:, 1].sum() > 0  # head rounds were timed
    assert drafted[0.02] >= 30 and drafted[3.0] <= drafted[0.02] // 3, drafted


def test_sampling_with_the_head_is_seeded(trained):
    from heron.runtime.draft_head import DraftHead, head_generate

    head, target = DraftHead(trained["bundle"], target=trained["target"]), trained["target"]
    opts = GenerationOptions(max_new_tokens=16, temperature=0.8, seed=5, stop_at_eot=False)
    runs = [[t.id for t in head_generate(target, head, PROMPTS[0], opts, 2)] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 16


def test_wrong_target_and_no_hidden_output_are_refused(trained, tmp_path):
    from heron.runtime.draft_head import DraftHead, head_generate

    head = DraftHead(trained["bundle"], target=trained["target"])
    other = write_tiny_llama(tmp_path / "other.gguf", np.random.default_rng(12), ("Q4_1", "Q8_0"))
    opts = GenerationOptions(max_new_tokens=4)
    with pytest.raises(ValueError, match="was trained for t.gguf"):
        list(head_generate(_target(other), head, PROMPTS[0], opts, 2))
    with pytest.raises(ValueError, match="was trained for t.gguf"):
        DraftHead(trained["bundle"], target=_target(other))
    with pytest.raises(ValueError, match="needs the target's hidden states"):
        list(head_generate(_target(trained["path"], hidden=False), head, PROMPTS[0], opts, 2))


def test_edited_bundles_are_one_line_errors(trained, tmp_path):
    import shutil

    from heron.runtime.draft_head import HEAD_FILE, DraftHead

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(trained["bundle"], dst)
        return dst

    with pytest.raises(BundleError, match="changed after export"):
        DraftHead(edit_manifest(copy("a"), lambda m: m.update(name="x"), sign=False), target=trained["target"])
    with pytest.raises(BundleError, match="distinct word ids"):
        DraftHead(edit_manifest(copy("b"), lambda m: m["words"].__setitem__(1, m["words"][0])), target=trained["target"])
    with pytest.raises(BundleError, match="does not know"):
        DraftHead(edit_manifest(copy("c"), lambda m: m.update(extra=1)), target=trained["target"])
    c = copy("d")
    (c / HEAD_FILE).write_bytes((c / HEAD_FILE).read_bytes()[:-10])
    with pytest.raises(BundleError, match="sha256|bytes"):
        DraftHead(c, target=trained["target"])
    with pytest.raises(BundleError, match="no manifest.json|no such folder"):
        DraftHead(tmp_path / "missing")
    (tmp_path / "empty").mkdir()  # a folder without a manifest: the hint says how a draft head is made
    with pytest.raises(BundleError, match="not a heron draft-head bundle .make one with `scripts/train_draft_head.py"):
        DraftHead(tmp_path / "empty")
    with pytest.raises(ValueError, match="vocabulary of 65 words; this model has 64"):
        DraftHead(edit_manifest(copy("e"), lambda m: m.update(vocab_size=65)), target=trained["target"])


def test_the_sdk_runs_the_head_on_an_onnxruntime_target(trained):
    """LanguageModel.generate(..., SpeculativeOptions(method="head", head=DIR)) on the tiny GGUF's graph: the
    tokens of plain decoding; a torch target or no bundle is refused in one line."""
    import heron
    from heron.lm import _onnx_model

    lm = _onnx_model(trained["target"], trained["path"])
    opts = GenerationOptions(max_new_tokens=16, temperature=0.0, stop_at_eot=False)
    spec = heron.SpeculativeOptions(method="head", gamma=2, head=str(trained["bundle"]), adaptive=False)
    stats = DecodeStats()
    assert [t.id for t in lm.generate(PROMPTS[2], opts, spec, stats)] == [t.id for t in lm.generate(PROMPTS[2], opts)]
    assert stats.rounds > 0
    with pytest.raises(ValueError, match="shipped draft head is for SmolLM2.*--draft-head DIR"):
        lm.generate(PROMPTS[2], opts, heron.SpeculativeOptions(method="head"))  # the default: SmolLM2's head
    # the head runs on one thread beside a target of two: no second thread pool to contend with the target's
    from heron.runtime.lm import OnnxLM
    two = _onnx_model(OnnxLM.from_memory(*_graph_and_manifest(trained["path"], True, True), threads=2,
                                         source_file=trained["path"]), trained["path"])
    assert two.backend.threads == 2 and two.draft_head(spec).session.get_session_options().intra_op_num_threads == 1
    assert [t.id for t in two.generate(PROMPTS[2], opts, spec)] == [t.id for t in two.generate(PROMPTS[2], opts)]


def test_the_head_drafts_for_the_native_decoder(trained):
    """heron's native decoder as the head's target: its hidden states are the onnx graph's (the head's input, after
    the output norm), the head takes its rows from the GGUF file and checks the file's sha256, and speculation
    yields plain decoding's tokens."""
    from heron.runtime import native
    from heron.runtime.draft_head import DraftHead, head_generate

    if native._compiler() is None:
        pytest.skip("no C compiler here: heron's native decoder cannot be built")
    native.build()
    target = native.NativeLM(trained["path"])
    assert target.hidden_at(0) is None  # nothing computed yet
    tokens = PROMPTS[1]
    target.forward(tokens)
    graph = trained["target"]
    graph.reset()
    graph.forward(tokens)
    for i in range(len(tokens)):
        want = graph.hidden_at(i)
        np.testing.assert_allclose(target.hidden_at(i), want, atol=0.05 * np.abs(want).max())
    target.trim(2)
    assert target.hidden_at(len(tokens) - 1) is None and target.hidden_at(len(tokens) - 3) is not None
    target.reset()
    head = DraftHead(trained["bundle"], target=target)
    opts = GenerationOptions(max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    drafted = 0
    for prompt in PROMPTS:
        ref = [t.id for t in plain(target, prompt, opts)]
        stats = DecodeStats()
        assert [t.id for t in head_generate(target, head, prompt, opts, 3, stats, adaptive=False)] == ref, prompt
        drafted += sum(stats.windows)
    assert drafted > 20
    other = native.NativeLM(write_tiny_llama(trained["path"].parent / "other-native.gguf",
                                             np.random.default_rng(12), ("Q4_1", "Q8_0")))
    with pytest.raises(ValueError, match="was trained for"):
        DraftHead(trained["bundle"], target=other)


def _native_target(path, threads=1):
    from heron.runtime import native

    if native._compiler() is None:
        pytest.skip("no C compiler here: heron's native decoder cannot be built")
    native.build()
    return native.NativeLM(path, threads=threads)


def _reference_head(bundle, target, words, bits=8):
    """The exported head in float64 numpy from head.onnx's own initializers (its int8 blocks dequantized; bits 4:
    the projection's and the blocks' re-rounded by native.head.round_q4_1, dequantized) and the target's rows of `words`:
    what both engines approximate (onnxruntime rounds activations to int8, the native one to int16)."""
    from heron.runtime.native.head import round_q4_1
    from heron.runtime.draft_head import HEAD_FILE, target_rows
    from heron.runtime.onnx_file import initializer_names, read_initializers

    graph = bundle / HEAD_FILE
    names = [n for n in initializer_names(graph.read_bytes(), "") if n.startswith(("proj", "blocks", "emb_norm",
                                                                                     "bias", "oov", "row_of_word"))]
    t = read_initializers(graph, names)

    def deq(q, s):
        n, nb, _ = q.shape
        return ((q.astype(np.float64) - 128) * np.asarray(s, np.float64).reshape(n, nb, 1)).reshape(n, nb * 32)

    def deq4(w):
        nib, d, m = round_q4_1(w.astype(np.float32).reshape(w.shape[0], -1, 32))
        q = np.concatenate([nib & 15, nib >> 4], -1).astype(np.float64)
        return (q * d.astype(np.float64)[..., None] + m.astype(np.float64)[..., None]).reshape(w.shape)

    W = {k[:-2]: deq(t[k], t[k[:-2] + ".scales"]) for k in t if k.endswith(".q")}
    if bits == 4:
        W = {k: deq4(v) for k, v in W.items()}
    E = deq(*target_rows(target, words))
    rms = lambda x, g: x / np.sqrt((x * x).mean() + 1e-5) * g  # noqa: E731
    n_blocks = sum(1 for k in t if k.endswith(".norm") and k.startswith("blocks."))

    def step(h, tok):
        r = int(t["row_of_word"][tok])
        e = E[r] if r < len(E) else t["oov"][0]
        f = h + W["proj"] @ np.concatenate([h, rms(e, t["emb_norm"])])
        for i in range(n_blocks):
            n = rms(f, t[f"blocks.{i}.norm"])
            g, u = W[f"blocks.{i}.gate"] @ n, W[f"blocks.{i}.up"] @ n
            f = f + W[f"blocks.{i}.down"] @ (g / (1 + np.exp(-g)) * u)
        return E @ f + t["bias"], f
    return step


def _near_reference(head, ref, h, tok):
    """head's step from (h, tok) against the float64 reference's, within int16 activations' and fp16 scales'
    rounding -> (its logits, the reference's)."""
    logits, feature = head.step(h, tok)
    lr, fr = ref(h.astype(np.float64), tok)
    np.testing.assert_allclose(logits, lr, atol=2e-3 * np.abs(lr).max())
    np.testing.assert_allclose(feature, fr, atol=2e-3 * np.abs(fr).max())
    return logits, lr


def test_the_native_head_computes_the_exported_head(trained):
    """Beside a native target the head runs in heron's library (engine auto): its logits and feature are the
    float64 head's within int16 activation rounding and fp16 block scales (onnxruntime's int8 activations err ~100x
    more); a greedy window of g chained steps in one call is the argmax chain of single steps; 1, 2 and 3 threads
    give the same bits; a head storing its own rows computes what one reading the target's computes."""
    from heron.runtime.draft_head import DraftHead

    target = _native_target(trained["path"])
    head = DraftHead(trained["bundle"], target=target)
    assert head.engine == "native" and head.session is None
    ref = _reference_head(trained["bundle"], target, head.words)
    rng = np.random.default_rng(4)
    dim = trained["model"].cfg.dim
    cases = [(rng.standard_normal(dim).astype(np.float32), int(rng.integers(0, 64))) for _ in range(8)]
    for h, tok in cases:
        _near_reference(head, ref, h, tok)
    others = [DraftHead(trained["bundle"], target=_native_target(trained["path"], threads=k)) for k in (2, 3)]
    others.append(DraftHead(trained["inline"], target=target))  # its rows stored in head.onnx
    for h, tok in cases[:4]:
        chain = _first_choices(head, h, tok, 5)[0]
        assert head.greedy(h, tok, 5) == chain
        for other in others:
            got, want = other.step(h, tok), head.step(h, tok)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert other.greedy(h, tok, 5) == chain


def test_a_4bit_native_head_computes_its_rounded_weights(trained):
    """DraftHead(bits=4): the native head's projection and blocks re-rounded to 4-bit blocks, its words kept in 8:
    its logits and feature are the float64 head on those rounded weights within the 8-bit head's tolerance; a
    greedy window is the chain of its single steps; 1 and 2 threads give the same bits; speculation with it gives
    plain decoding's tokens; bits other than 8 and 4, or 4 off the native engine, are one line."""
    from heron.runtime.draft_head import DraftHead, head_generate

    target = _native_target(trained["path"])
    head = DraftHead(trained["bundle"], target=target, bits=4)
    assert head.engine == "native" and head.native.bits == 4
    ref = _reference_head(trained["bundle"], target, head.words, bits=4)
    eight = _reference_head(trained["bundle"], target, head.words)
    rng = np.random.default_rng(5)
    dim = trained["model"].cfg.dim
    two = DraftHead(trained["bundle"], target=_native_target(trained["path"], threads=2), bits=4)
    apart = 0.0
    for _ in range(6):
        h, tok = rng.standard_normal(dim).astype(np.float32), int(rng.integers(0, 64))
        logits, lr = _near_reference(head, ref, h, tok)
        apart = max(apart, np.abs(eight(h.astype(np.float64), tok)[0] - lr).max() / np.abs(lr).max())
        assert head.greedy(h, tok, 4) == _first_choices(head, h, tok, 4)[0]
        np.testing.assert_array_equal(two.step(h, tok)[0], logits)
    assert apart > 2e-3  # the 4-bit head is not the 8-bit one: the check above tells them apart
    opts = GenerationOptions(max_new_tokens=16, temperature=0.0, stop_at_eot=False)
    ref_ids = [t.id for t in plain(target, PROMPTS[0], opts)]
    assert [t.id for t in head_generate(target, head, PROMPTS[0], opts, 3, adaptive=False)] == ref_ids
    with pytest.raises(ValueError, match="bits must be one of 8, 4"):
        DraftHead(trained["bundle"], target=target, bits=2)
    with pytest.raises(ValueError, match="a 4-bit head runs in the native library"):
        DraftHead(trained["bundle"], target=target, engine="onnxruntime", bits=4)
    with pytest.raises(ValueError, match="a 4-bit head runs in the native library"):
        DraftHead(trained["bundle"], target=trained["target"], bits=4)


def _first_choices(head, h, tok, g):
    """g single steps chained from each one's first choice -> (the words, each one's probability in the float64
    softmax of the step's logits)."""
    words, ps = [], []
    for _ in range(g):
        logits, h = head.step(h, tok)
        k = int(np.argmax(logits))
        ps.append(1 / np.exp(logits.astype(np.float64) - logits[k]).sum())
        tok = int(head.words[k])
        words.append(tok)
    return words, ps


def test_the_heads_windows_follow_its_own_probabilities(trained):
    """Greedy windows sized by the head's confidence (decoding.confidence_window): a word is kept while the window's
    expected words per cost grow. The native library runs the same rule inside the head's one call: its window is
    the chain's prefix that the rule keeps from the probabilities it reports (those of the float64 softmax of its
    logits), for cheap, dear and tabled prices; free verification keeps every word, a prohibitive price none;
    onnxruntime's head keeps the same prefix of its own chain; speculation stays plain decoding's."""
    from heron.runtime.decoding import confidence_window, window_prices
    from heron.runtime.draft_head import DraftHead, head_generate

    assert confidence_window([0.9] * 4, window_prices(4, cost=0.0)) == 4  # free: every word pays
    assert confidence_window([0.9] * 4, window_prices(4, cost=10.0)) == 0
    assert confidence_window([0.2, 0.99], window_prices(2, cost=0.3)) == 0  # (1 + 0.2) / 1.3 < a plain step
    assert confidence_window([0.9, 0.9, 0.9], window_prices(3, cost=0.1, costs=(0.05, 0.1, 2.0))) == 2  # T = 4 dear
    assert confidence_window(iter([0.9, 0.9]), window_prices(1, cost=0.1)) == 1 and confidence_window([], [0.1]) == 0
    np.testing.assert_allclose(window_prices(3, cost=0.5, free=1, draft=0.1), [0.1, 0.7, 1.3], rtol=1e-6)

    target = _native_target(trained["path"], threads=2)
    head = DraftHead(trained["bundle"], target=target)
    ort = DraftHead(trained["bundle"], target=target, engine="onnxruntime")
    rng = np.random.default_rng(7)
    dim = trained["model"].cfg.dim
    tables = [window_prices(6, cost=c, draft=d) for c, d in ((0.0, 0.0), (0.05, 0.02), (0.3, 0.05), (10.0, 0.0))]
    tables.append(window_prices(6, cost=0.3, draft=0.05, costs=(0.1, 0.15, 0.6, 0.8)))
    lengths = set()
    for _ in range(12):
        h, tok = rng.standard_normal(dim).astype(np.float32) * 3, int(rng.integers(0, 64))
        chain, ps = _first_choices(head, h, tok, 6)
        o_chain, o_ps = _first_choices(ort, h, tok, 6)  # onnxruntime's head: its own chain and probabilities
        for prices in tables:
            probs = np.full(6, np.nan, np.float32)
            rows = head.native.greedy(h, tok, 6, prices, probs)
            n = len(rows)
            assert head.words[rows].tolist() == chain[:n] and head.greedy(h, tok, 6, None, prices) == chain[:n]
            assert n == confidence_window(probs, prices)
            ran = min(n + 1, 6)  # the step that ended the window reported its probability too
            np.testing.assert_allclose(probs[:ran], ps[:ran], rtol=1e-4)
            lengths.add(n)
            got = ort.greedy(h, tok, 6, None, prices)
            assert got == o_chain[:len(got)] and len(got) == confidence_window(o_ps, prices)
        assert len(head.greedy(h, tok, 6, None, tables[0])) == 6 and head.greedy(h, tok, 6, None, tables[3]) == []
    assert len(lengths) >= 3  # the windows' lengths vary with the head's confidence
    opts = GenerationOptions(max_new_tokens=20, temperature=0.0, stop_at_eot=False)
    for prompt in PROMPTS:
        ref = [t.id for t in plain(target, prompt, opts)]
        assert [t.id for t in head_generate(target, head, prompt, opts, 6, adaptive=True, confident=True)] == ref


def test_the_head_engine_is_checked(trained):
    """engine='native' needs a native target; an unknown engine is one line; onnxruntime can be asked for beside a
    native target (the A/B of benchmarks), and drafts the same tokens' output."""
    from heron.runtime.draft_head import DraftHead, head_generate

    with pytest.raises(ValueError, match="native head runs beside a native target"):
        DraftHead(trained["bundle"], target=trained["target"], engine="native")
    with pytest.raises(ValueError, match="engine must be one of"):
        DraftHead(trained["bundle"], target=trained["target"], engine="gpu")
    target = _native_target(trained["path"])
    head = DraftHead(trained["bundle"], target=target, engine="onnxruntime")
    assert head.engine == "onnxruntime" and head.native is None
    opts = GenerationOptions(max_new_tokens=16, temperature=0.0, stop_at_eot=False)
    ref = [t.id for t in plain(target, PROMPTS[0], opts)]
    assert [t.id for t in head_generate(target, head, PROMPTS[0], opts, 3, adaptive=False)] == ref


def test_a_head_without_a_native_form_runs_on_onnxruntime(trained, tmp_path):
    """A head whose int8 blocks fp16 cannot scale (a block of weights near 1e-7): engine auto runs it on onnxruntime
    beside the native target, engine native says why in one line, and so does a 4-bit head (never 8 bits on
    onnxruntime in its place)."""
    import copy

    from heron.export.draft_head import export_draft_head
    from heron.runtime.draft_head import DraftHead

    model = copy.deepcopy(trained["model"])
    with torch.no_grad():
        model.proj.weight[0, :32] = 1e-7  # one block's scale: 1e-7 / 127, below fp16's smallest normal
    bundle = export_draft_head(model, trained["path"], tmp_path / "tiny-scale", name="tiny-head")
    target = _native_target(trained["path"])
    head = DraftHead(bundle, target=target)
    assert head.engine == "onnxruntime" and head.native is None
    for kw in ({"engine": "native"}, {"bits": 4}):
        with pytest.raises(BundleError, match="no native form here .a block scale outside fp16's normal range"):
            DraftHead(bundle, target=target, **kw)


def test_sampling_with_the_native_head_is_seeded(trained):
    from heron.runtime.draft_head import DraftHead, head_generate

    target = _native_target(trained["path"], threads=2)
    head = DraftHead(trained["bundle"], target=target)
    opts = GenerationOptions(max_new_tokens=16, temperature=0.8, seed=5, stop_at_eot=False)
    runs = [[t.id for t in head_generate(target, head, PROMPTS[0], opts, 2)] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 16


def _folder_target(path, out):
    """The tiny GGUF's graph as a bundle folder (heron lm export writes the same files)."""
    from heron.export.gguf_onnx import build_graph
    from heron.runtime.bundle import write_manifest
    from heron.runtime.lm import OnnxLM, lm_manifest
    from heron.runtime.manifest import file_table, sha256_path

    model, cfg, _, _ = build_graph(path, compute="fp32")
    out.mkdir()
    (out / "model.int4.onnx").write_bytes(model.SerializeToString())
    write_manifest(out, lm_manifest(cfg, name="t", eot_id=None, source={"gguf": path.name, "gguf_sha256": sha256_path(path)},
                                    files=file_table(out, {"model.int4.onnx": "model.int4.onnx"})))
    return OnnxLM(out, weights="int4")


def test_the_heads_rows_come_from_the_target(trained, tmp_path):
    """A head exported without its output rows (the default) computes what the one that stores them computes,
    bit for bit, whether the target was built in memory from its GGUF file or loaded from a bundle folder; its
    file is smaller by those rows. Without a target, or with a target that has no file to read, it is refused."""
    from heron.runtime.draft_head import HEAD_FILE, DraftHead
    from heron.runtime.lm import OnnxLM

    n, dim = trained["model"].cfg.n_words, trained["model"].cfg.dim
    small, full = (trained[k] / HEAD_FILE for k in ("bundle", "inline"))
    assert full.stat().st_size - small.stat().st_size >= n * dim  # the int8 rows (and their scales) left out
    inline = DraftHead(trained["inline"])  # stores its rows: needs no target
    heads = [DraftHead(trained["bundle"], target=trained["target"]),
             DraftHead(trained["bundle"], target=_folder_target(trained["path"], tmp_path / "t"))]
    rng = np.random.default_rng(3)
    for _ in range(4):
        h, tok = rng.standard_normal(dim).astype(np.float32), int(rng.integers(0, 64))
        want = inline.step(h, tok)
        for head in heads:
            got = head.step(h, tok)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="takes its output rows from its target"):
        DraftHead(trained["bundle"])
    t = trained["target"]
    bare = OnnxLM.from_memory(*_graph_and_manifest(trained["path"]))  # no file to read the rows from
    with pytest.raises(ValueError, match="bundle folder or a GGUF file"):
        DraftHead(trained["bundle"], target=bare)
    assert t.source_file == trained["path"]


def test_edited_rows_are_refused(trained, tmp_path):
    """The rows' sha256 in the manifest, and the initializers it names, are checked against the target and
    head.onnx: an edit is one BundleError line."""
    import shutil

    from heron.runtime.draft_head import DraftHead

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(trained["bundle"], dst)
        return dst

    with pytest.raises(BundleError, match="not the ones this head was exported with"):
        DraftHead(edit_manifest(copy("a"), lambda m: m["rows"].update(sha256="0" * 64)), target=trained["target"])
    with pytest.raises(BundleError, match="external initializers"):
        DraftHead(edit_manifest(copy("b"), lambda m: m["rows"].update(packed="bias")), target=trained["target"])
    with pytest.raises(BundleError, match="rows"):
        DraftHead(edit_manifest(copy("c"), lambda m: m["rows"].update(scales=m["rows"]["packed"])),
                  target=trained["target"])
    with pytest.raises(BundleError, match="keeps initializers outside the file"):
        DraftHead(edit_manifest(copy("d"), lambda m: m.pop("rows")), target=trained["target"])


def test_the_heads_training_prompts_are_not_the_benchmarks():
    """scripts/draft_head_data.py's and draft_head_data_batched.py's prompt sets hold none of the speculation
    benchmarks' prompts (the chat set's too), nor their topics (the chat prompt's hash table, the varied set's job
    interview): the head is measured on text it was not trained on."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("draft_head_data", REPO / "scripts" / "draft_head_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bench = mod.held_out()
    assert len(bench) >= 20 and "Why do cats purr?" in bench  # the chat set of bench_smollm2_spec.py too
    for which in (1, 2, 3, 4):
        prompts = mod.prompt_set(which=which)
        assert len(prompts) > 200 and not bench & set(prompts), which
        assert not [p for p in prompts if "hash table" in p.lower() or "job interview" in p.lower()], which
    batched = _script("draft_head_data_batched")  # set 5: the templates x topics sets 1-4 do not ask
    five = batched.prompts_set5()
    assert len(five) > 5000 and len(set(five)) == len(five) and not bench & set(five)
    assert not set(five) & set().union(*(mod.prompt_set(which=k) for k in (1, 2, 3, 4)))
    assert not [p for p in five if "hash table" in p.lower() or "job interview" in p.lower()]
    six = batched.prompts_set6()  # set 6: code to write and edit, short answers; none asked before
    assert len(six) > 2000 and len(set(six)) == len(six) and not bench & set(six)
    assert not set(six) & (set(five) | set().union(*(mod.prompt_set(which=k) for k in (1, 2, 3, 4))))
    assert not [p for p in six if "hash table" in p.lower() or "job interview" in p.lower()]
    assert batched.PROMPT_SETS[5][0] != batched.PROMPT_SETS[6][0]  # their answers' files never collide


def _script(name):
    import importlib.util
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))  # the script imports draft_head_data beside it
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return mod


def test_batched_answers_are_recorded_as_one_answer_alone_would_be():
    """scripts/draft_head_data_batched.py records a left-padded batch of answers of different lengths in one call:
    each record (hidden states, top-K ids and log-probs at the positions that chose its words) is the one that
    answer gets alone, and the top-K are the model's own next-word log-probs there."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    batched = _script("draft_head_data_batched")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(0)
    answers = [(rng.integers(0, 96, n).tolist(), rng.integers(0, 96, m).tolist()) for n, m in ((5, 9), (12, 3), (7, 1))]
    together = batched.record_batch(model, answers, 8)
    for (prompt, ans), rec in zip(answers, together):
        alone = batched.record_batch(model, [(prompt, ans)], 8)[0]
        assert rec["tokens"].tolist() == ans and rec["prompt"].tolist() == prompt
        assert rec["hidden"].shape == (len(ans), 64) and rec["top_ids"].shape == (len(ans), 8)
        np.testing.assert_allclose(rec["hidden"].astype(np.float32), alone["hidden"].astype(np.float32), atol=2e-3)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ans[:-1]])).logits[0, len(prompt) - 1:]
        lp = torch.log_softmax(logits.double(), -1)
        # values, not ids: near-tied words may swap places between kernels, their log-probs may not
        best = lp.topk(8, -1).values.numpy()
        for r in (rec, alone):
            np.testing.assert_allclose(r["top_logprobs"].astype(np.float64), best, atol=2e-2)
            np.testing.assert_allclose(np.take_along_axis(lp.numpy(), r["top_ids"].astype(np.int64), -1), best, atol=2e-2)


def test_answers_with_and_without_streams_load_together(tmp_path):
    """load_data over several folders: answers recorded with the middle layers' streams and without them mix when
    the streams are left out (streams=False), and are refused in one line otherwise."""
    from heron.models.lm import draft_head as dh

    a = _synthetic_answers(tmp_path / "a", n_answers=5)
    b = _stream_answers(tmp_path / "b", np.zeros((64, 64), np.float32), n_answers=4)
    both = dh.load_data([a, b], streams=False)
    assert len(both.x) == 9 * 23 and both.streams.shape == (9 * 23, 0) and len(np.unique(both.answer)) == 9
    assert dh.load_data(b).streams.shape == (4 * 23, 64)
    with pytest.raises(ValueError, match="different --features"):
        dh.load_data([a, b])
    with pytest.raises(FileNotFoundError, match="no answers"):
        dh.load_data([a, tmp_path / "empty"])


def test_the_graph_outputs_the_middle_layers_streams(trained):
    """build_graph(feature_layers=...): the residual stream after each named layer, as the torch model computes it
    (record_forced's one teacher-forced call), and the same logits and hidden states as the graph without them."""
    from heron.export.gguf_onnx import FEATURES_OUTPUT, build_graph
    from heron.models.lm.draft_head import record_forced
    from heron.models.lm.gguf_file import load_gguf
    from heron.runtime.lm import state_names
    from heron.runtime.sessions import open_session

    path = trained["path"]
    model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=False, feature_layers=(0,))
    assert FEATURES_OUTPUT in [o.name for o in model.graph.output]
    session = open_session(model.SerializeToString(), 1, ["CPUExecutionProvider"])
    ids, answer = [3, 1, 4, 1, 5, 9], [2, 6, 5, 3]
    rec = record_forced(session, state_names(cfg.n_layers)[0], cfg.n_kv_heads, cfg.head_dim, ids, answer)
    assert rec["features"].shape == (4, 64) and rec["hidden"].shape == (4, 64)

    torch_model, _ = load_gguf(path)
    streams = []
    hook = torch_model.layers[0].register_forward_hook(lambda m, i, o: streams.append(o[0].detach()))
    with torch.no_grad():
        logits = torch_model(torch.tensor([ids + answer[:-1]])).logits[0, -4:]
    hook.remove()
    want = streams[0][0, -4:].numpy()  # the positions that chose the answer's words
    assert np.allclose(rec["features"].astype(np.float32), want, atol=2e-2 * max(1.0, np.abs(want).max()))
    assert (rec["top_ids"][:, 0] == logits.argmax(-1).numpy()).all()
    plain_graph = _target(path)  # the runtime's graph: no features output, same logits and hidden states
    plain_graph.reset()
    plain_graph.forward(ids + answer[:-1], last=4)
    got = np.stack([plain_graph.hidden_at(len(ids) - 1 + i) for i in range(4)])
    assert np.allclose(got, rec["hidden"].astype(np.float32), atol=1e-2)
    with pytest.raises(ValueError, match="feature_layers must be distinct layers in 0..0"):
        build_graph(path, compute="fp32", feature_layers=(1,))


def _stream_answers(folder, code_rows, n_answers=150, length=24, seed=3):
    """Synthetic answers whose next word shows only in the recorded streams: the word after position p is
    codes[p] and the streams at p are code_rows[codes[p]]; the hidden states are noise and the given word (the
    previous code) says nothing."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(n_answers):
        codes = rng.integers(0, 64, length)
        toks = np.concatenate([[rng.integers(0, 64)], codes[:-1]]).astype(np.int32)
        others = (toks[:, None] + np.arange(1, 32)[None, :]) % 64
        top_ids = np.concatenate([toks[:, None], others], 1).astype(np.int32)
        top_lp = np.log(np.concatenate([np.full((length, 1), 0.9), np.full((length, 31), 0.1 / 31)], 1))
        np.savez(folder / f"p{i:05d}.npz", prompt=np.zeros(1, np.int32), tokens=toks, top_ids=top_ids,
                 top_logprobs=top_lp.astype(np.float16), hidden=rng.standard_normal((length, 64)).astype(np.float16),
                 features=code_rows[codes].astype(np.float16))
    return folder


def test_a_head_can_fuse_the_middle_layers_streams(trained, tmp_path, monkeypatch):
    """n_features: where the next word shows only in the streams, the head that fuses them learns it and the one
    without cannot; the exported head computes the torch head with and without streams (zeros: no fusion), names
    the layers it reads, and drafts on a target that returns those streams: plain decoding's tokens, with the
    streams given at each window's first step only."""
    from heron.export.draft_head import export_draft_head
    from heron.models.lm import draft_head as dh
    from heron.runtime.draft_head import DraftHead, head_generate

    code_rows = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    data = dh.load_data(_stream_answers(tmp_path / "data", code_rows))
    assert data.streams.shape == (len(data.x), 64)
    table = dequantized_table(trained["path"])
    opts = dh.TrainOptions(steps=600, batch=128, lr=5e-3, threads=1)
    fused, report = dh.train(data, table, dh.DraftHeadConfig(dim=64, hidden=128, n_words=48, n_features=1), opts,
                             log=lambda s: None)
    _, without = dh.train(data, table, dh.DraftHeadConfig(dim=64, hidden=128, n_words=48), opts, log=lambda s: None)
    assert report["top1_step1"] > 0.6 and without["top1_step1"] < 0.3, (report, without)

    with pytest.raises(ValueError, match="name their layers"):
        export_draft_head(fused, trained["path"], tmp_path / "bad", name="x")
    bundle = export_draft_head(fused, trained["path"], tmp_path / "bundle", name="fused", stream_layers=(0,))
    target = _target(trained["path"])
    head = DraftHead(bundle, target=target)
    assert head.stream_layers == (0,) == target.feature_layers
    rng = np.random.default_rng(6)
    for streams in (rng.standard_normal(64).astype(np.float32) * 3, None):
        h, tok = rng.standard_normal(64).astype(np.float32), 7
        with torch.no_grad():
            f_ref, l_ref = fused(torch.from_numpy(h[None]), torch.tensor([tok]),
                                 None if streams is None else torch.from_numpy(streams[None]))
        logits, feature = head.step(h, tok, streams)
        np.testing.assert_allclose(feature, f_ref[0].numpy(), atol=0.05 * float(f_ref.abs().max()) + 0.05)
        assert np.corrcoef(logits, l_ref[0].numpy())[0, 1] > 0.98
    with pytest.raises(ValueError, match=r"fuses the streams of the target's layers \[0\]; this graph returns \[\]"):
        DraftHead(bundle, target=_target(trained["path"], streams=False))

    seen = []
    step = DraftHead.step

    def spy(self, hidden, token, streams=None):
        seen.append(streams is not None)
        return step(self, hidden, token, streams)

    opts = GenerationOptions(max_new_tokens=16, stop_at_eot=False)
    monkeypatch.setattr(DraftHead, "step", spy)
    for prompt in PROMPTS[:2]:
        ref = [t.id for t in plain(target, prompt, opts)]
        assert [t.id for t in head_generate(target, head, prompt, opts, 3, adaptive=False, lookup=False)] == ref
    assert seen.count(True) >= 4 and seen.count(False) >= 4  # first steps with streams, chained ones without


def dequantized_table(path):
    from heron.export.gguf_onnx import dequantized, read_blocks
    from heron.runtime.gguf import GGUFFile

    return dequantized(read_blocks(GGUFFile(path), "token_embd.weight"))


def test_the_targets_streams_come_back_with_its_hidden_states(trained):
    """A graph that returns streams beside `hidden` (the layers in its manifest's source.feature_layers, as
    export_gguf_bundle writes them: tests/test_gguf_onnx.py): OnnxLM keeps them for the positions a call returned
    (streams_at), with shared buffers or without."""
    from heron.export.gguf_onnx import build_graph, default_feature_layers
    from heron.models.lm.draft_head import record_forced
    from heron.runtime.lm import OnnxLM, state_names
    from heron.runtime.sessions import open_session

    assert default_feature_layers(30) == (2, 14) and default_feature_layers(2) == (0,)
    path = trained["path"]
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    model, cfg, _, _ = build_graph(path, compute="fp32", shared_cache=False, feature_layers=(0,))
    ref = record_forced(open_session(model.SerializeToString(), 1, ["CPUExecutionProvider"]),
                        state_names(cfg.n_layers)[0], cfg.n_kv_heads, cfg.head_dim, ids[:-3], ids[-3:])
    for shared in (True, False):
        lm = OnnxLM.from_memory(*_graph_and_manifest(path, shared=shared))
        assert lm.feature_layers == (0,)
        lm.forward(ids[:-2], last=2)  # positions 4 and 5 come back
        assert lm.streams_at(3) is None and lm.streams_at(6) is None
        for i, pos in enumerate((4, 5)):
            np.testing.assert_allclose(lm.streams_at(pos), ref["features"][i].astype(np.float32), rtol=2e-3, atol=2e-2)
        lm.trim(1)
        assert lm.streams_at(5) is None and lm.streams_at(4) is not None


@pytest.mark.parametrize("layers", [None, [], [0, 0], ["0"], [5], [True]])
def test_a_graph_whose_streams_the_manifest_does_not_name_is_refused(trained, layers):
    from heron.runtime.lm import OnnxLM

    graph, manifest = _graph_and_manifest(trained["path"])
    manifest.source["feature_layers"] = layers
    with pytest.raises(BundleError, match="does not say which"):
        OnnxLM.from_memory(graph, manifest)


def test_the_probe_sizes_windows_by_confidence_and_scores_them_with_the_targets_words():
    """scripts/probe_draft_head.py: a near-certain head drafts two words, an unsure one one; a tree keeps the
    target's word where it is the head's second choice; the tokens counted are the target's, not the head's hopes."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("probe_draft_head", Path(__file__).parents[1] / "scripts" / "probe_draft_head.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rows = {1: 1.0, 2: 1.0, 3: 1.15, 4: 1.3, 5: 1.45, 6: 1.6, 7: 1.75}
    pols = probe.policies(rows, 0.02)
    sure = {"p": [0.95, 0.03, 0.01, 0.01], "rank": 0, "step2_0": {"p": [0.9, 0.05, 0.01], "rank": 0},
            "step2_1": {"p": [0.5, 0.2, 0.1], "rank": 99}}
    unsure = {"p": [0.3, 0.25, 0.1, 0.05], "rank": 1, "step2_0": {"p": [0.4, 0.2, 0.1], "rank": 0},
              "step2_1": {"p": [0.3, 0.2, 0.1], "rank": 99}}
    assert pols["confidence window <= 2"](sure) == ("a1", "a2")
    assert pols["confidence window <= 2"](unsure) == ("a1",)
    assert probe._round(probe._nodes(sure), ("a1", "a2"), rows, 0.02)[2] == 3  # both drafted words and a bonus
    assert probe._round(probe._nodes(unsure), ("a1",), rows, 0.02)[2] == 1  # rejected: the correction only
    assert "b1" in pols["confidence tree {a1,b1}"](unsure)
    assert probe._round(probe._nodes(unsure), ("a1", "b1"), rows, 0.02)[2] == 2  # the second choice was right


def test_the_replay_decodes_as_the_engine_does_and_prices_its_calls(trained):
    """scripts/replay_speculation.py: the engine's drafters run against a target that replays a known answer; they
    propose the same windows as against the real target, return its answer, and each call is priced by its rows."""
    import importlib.util
    from pathlib import Path

    from heron.runtime.draft_head import DraftHead, head_generate

    spec = importlib.util.spec_from_file_location("replay_speculation",
                                                  Path(__file__).parents[1] / "scripts" / "replay_speculation.py")
    rp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rp)
    head, target = DraftHead(trained["bundle"], target=trained["target"]), trained["target"]
    opts = GenerationOptions(max_new_tokens=24, temperature=0.0, stop_at_eot=False)
    pols = rp.policies(head, lambda: GenerationOptions(temperature=0.0))
    rows = {T: 1.0 + 0.2 * (T - 1) for T in range(1, 14)}
    for prompt in ([3, 1, 4, 1, 5, 9, 2, 6, 3, 1, 4, 1, 5, 9, 2], [5, 3, 5, 8, 9, 7]):
        real = DecodeStats()
        answer = [t.id for t in head_generate(target, head, prompt, opts, 8, real)]
        rec = rp.teacher_forced(target, prompt, answer)
        got = rp.replay(rec, target, pols["head+lookup adaptive g<=8"][1], 8, rows, 0.05)
        assert got["rounds"] == real.rounds and got["drafted"] == sum(real.windows)
        assert got["accepted"] == sum(real.accepted) and got["tokens"] == len(answer) - 1
        # every call after the prefill priced: a round of k drafted words costs rows[k + 1] (its correction's row
        # included), a plain step rows[1], each head step 0.05, each round OVERHEAD
        assert got["cost"] >= got["calls"] * 1.0 + rp.OVERHEAD * got["rounds"] - 1e-9
    assert got["drafted"] > 0 and got["accepted"] > 0  # windows were drafted and some accepted, not only plain steps
