"""heron.runtime.native: the C decoder on a GGUF file's own blocks. Its logits equal the dequantized torch model's
within int16 rounding, a one-token step computes what the same token computes inside a block (bit for bit, so
speculation stays exact), the cache rewinds, and bad input is one line. Skips where no C compiler exists."""
import shutil

import numpy as np
import pytest

from conftest import smollm2_gguf, write_tiny_llama

gguf = pytest.importorskip("gguf")

from heron.runtime import native  # noqa: E402

if native._compiler() is None:
    pytest.skip("no C compiler here: heron's native decoder cannot be built", allow_module_level=True)


@pytest.fixture(scope="module")
def library():
    return native.build()


@pytest.mark.parametrize("types,untied,vocab,heads", [(("Q4_1", "Q4_0"), False, 64, 2), (("Q8_0", "Q4_1"), True, 64, 2),
                                                      (("Q4_1", "Q8_0"), False, 59, 2), (("Q4_0", "Q4_1"), True, 61, 2),
                                                      (("Q4_1", "Q8_0"), False, 64, 4)])
def test_logits_equal_the_dequantized_model(tmp_path, library, types, untied, vocab, heads):
    """vocab 59 / 61: the head's and the embedding's last group of eight rows is partly padding; 4 heads of 16: a
    head's outputs are half a block of 32."""
    torch = pytest.importorskip("torch")
    from heron.models.lm.gguf_file import load_gguf

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(0), types, untied=untied, vocab=vocab,
                            heads=heads)
    tokens = [1, 5, 9, 33, 2, 58, 7, 7, 40, 3]
    lm = native.NativeLM(path)
    ours = np.concatenate([lm.forward(tokens[:6]), lm.forward(tokens[6:9]), lm.forward(tokens[9:])])
    ref, _ = load_gguf(path)
    with torch.no_grad():
        theirs = ref(torch.tensor([tokens])).logits[0].numpy()
    assert ours.shape == theirs.shape == (10, vocab) and lm.length == 10
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    # int16 activations (~1e-5 of a block's largest value per product) and the KV cache in fp16 (2^-11 of each
    # cached key and value): 1.3e-3 at most in these four models
    assert err < 2e-3, err


def _reference_linear(path, name: str, x: np.ndarray, top: int) -> np.ndarray:
    """float64 y = x W^T as heron_lm.c computes a 4-bit linear: x rounded per block of 32 to +-top (127: int8, 32767:
    int16; float32 arithmetic as the C's), integer sums per block, then the blocks' scale and offset terms (the
    offsets' term from the rounded values' sum for int8, from x's own for int16)."""
    from heron.runtime.gguf import GGUFFile

    f = GGUFFile(path)
    t = f.tensors[name]
    values, d, m = native.split_blocks(f.raw(name), t.type_name, *t.shape)
    nib = np.concatenate([values & 15, values >> 4], axis=-1).astype(np.int64)  # (n, nb, 32): elements 0..31
    xb = x.astype(np.float32).reshape(len(x), -1, 32)
    amax = np.abs(xb).max(-1)
    inv = np.where(amax > 0, np.float32(top) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(xb * inv[..., None]).astype(np.int64)
    xs = (amax / np.float32(top)).astype(np.float64)
    xsum = q.sum(-1) * xs if top == 127 else xb.astype(np.float64).sum(-1)
    s = np.einsum("tbi,rbi->trb", q, nib).astype(np.float64)
    return (s * d.astype(np.float64)[None] * xs[:, None]).sum(-1) + (m.astype(np.float64)[None] * xsum[:, None]).sum(-1)


@pytest.mark.parametrize("activations", ["int8", "int16"])
def test_a_4bit_linear_computes_its_rounded_input_exactly(tmp_path, library, activations):
    """Each layer linear alone (native.linear_apply), Q4_1 and Q4_0, 16 to 96 rows, 64 or 96 inputs, calls of 1 to 9
    tokens (tiles of every size): the integers of the rounded input's products exactly, the float terms to float32
    rounding, int8 (vpmaddubsw / vpdpbusd on the int8 layout) as int16."""
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(9), ("Q4_1", "Q4_0"), heads=4)
    lm = native.NativeLM(path, activations=activations)
    rng = np.random.default_rng(10)
    top = 127 if activations == "int8" else 32767
    for i, name in enumerate(native.LAYER_LINEARS * 2):
        lin = lm._layers[i]
        assert lin.type == (native.W_Q4A8 if activations == "int8" else 4)
        for T in (1, 4, 5, 9):
            x = rng.standard_normal((T, lin.k)).astype(np.float32)
            x[:, :32] = 0.0  # a block of zeros: scale 0
            ref = _reference_linear(path, f"blk.{i // 7}.{name}.weight", x, top)
            ours = native.linear_apply(lm._lib, lin, x)
            assert ours.shape == ref.shape
            assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), (name, T)


def test_int8_activations_run_the_model_as_exactly_as_int16(tmp_path, library):
    """activations="int8" on the whole model: near the dequantized model (within int8 rounding: every linear's
    input errs by up to 1/254 of its block's largest value), not int16's logits, a step the same bits as a block, two
    threads as one."""
    torch = pytest.importorskip("torch")
    from heron.models.lm.gguf_file import load_gguf

    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(7), ("Q4_1", "Q4_0"), untied=True, heads=4)
    tokens = [1, 5, 9, 33, 2, 58, 7, 7, 40, 3]
    lm = native.NativeLM(path, activations="int8")
    assert lm.activations == "int8"
    ours = lm.forward(tokens)
    ref, _ = load_gguf(path)
    with torch.no_grad():
        exact = ref(torch.tensor([tokens])).logits[0].numpy()
    # a gross check only (a wrong layout errs by the logits' own size; int8 rounding moves them far less, and a
    # rounding flipped by another CPU's float order a little more or less): exactness is checked per linear above
    assert np.abs(ours - exact).max() < 0.25 * np.abs(exact).max()
    assert (ours.argmax(-1) == exact.argmax(-1)).mean() >= 0.6
    assert not np.array_equal(native.NativeLM(path).forward(tokens), ours)
    lm.reset()
    lm.forward(tokens[:6])
    assert all(np.array_equal(lm.forward([t], last=1)[0], ours[i]) for i, t in zip(range(6, 10), tokens[6:]))
    two = native.NativeLM(path, activations="int8", threads=2)
    assert np.array_equal(two.forward(tokens), ours)


def test_int8_activations_need_4bit_layers(tmp_path, library):
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(8), ("Q4_1", "Q8_0"))
    with pytest.raises(ValueError, match="4-bit blocks; 'blk.1.attn_q.weight' is Q8_0"):
        native.NativeLM(path, activations="int8")
    with pytest.raises(ValueError, match="activations must be one of"):
        native.NativeLM(path, activations="int4")


def test_steps_equal_blocks_and_the_cache_rewinds(tmp_path, library):
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(1), ("Q4_1", "Q8_0"))
    lm = native.NativeLM(path, max_len=64)
    block = lm.forward([3, 1, 4, 1, 5, 9, 2, 6])
    lm.reset()
    lm.forward([3, 1, 4])
    steps = [lm.forward([t], last=1)[0] for t in (1, 5, 9, 2, 6)]
    assert all(np.array_equal(s, b) for s, b in zip(steps, block[3:]))
    lm.trim(5)  # the same tokens as a block of 5: tiles of two and one token fall elsewhere, the same bits
    assert np.array_equal(lm.forward([1, 5, 9, 2, 6]), block[3:])
    mark = lm.snapshot()
    sevens = lm.forward([7, 7, 7])
    lm.restore(mark)
    assert lm.length == 8 and np.array_equal(lm.forward([7], last=1)[0], sevens[0])
    lm.trim(1)
    again = lm.forward([8, 8], last=1)
    lm.trim(2)
    assert np.array_equal(lm.forward([8, 8], last=1), again)
    assert lm.forward([8, 8, 8, 8], last=2).shape == (2, 64)
    lm.reserve(40)  # keys and values in fp16: 2 bytes each, 2 layers x 1 KV head x 40 positions x 32
    assert lm.cache_bytes == 2 * (2 * 1 * 40 * 32) * 2


@pytest.mark.parametrize("threads,heads", [(2, 2), (3, 2), (5, 2), (2, 4)])
def test_threads_compute_the_same_bits(tmp_path, library, threads, heads):
    """One team per call: linears split by rows, attention and the rounding of its outputs by heads (3 and 5 threads:
    more than the 2 heads, some idle; 4 heads of 16: outputs that are not whole blocks, rounded by tokens after a
    barrier), SiLU and its rounding by blocks of 32, residuals and norms by tokens; every value the same bits as one
    thread's, in a prompt, a verify block with some logits, and one-token steps, with the hidden states."""
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(2), ("Q4_1", "Q8_0"), vocab=59, heads=heads)
    runs = []
    for n in (1, threads):
        lm = native.NativeLM(path, threads=n)
        out = [lm.forward([1, 2, 3, 4, 5, 6, 7])]
        out.append(lm.forward([8, 9, 10, 11, 12], last=3))
        out.append(lm.hidden_at(lm.length - 2))
        out += [lm.forward([t], last=1) for t in (13, 14)]
        out.append(lm.hidden_at(lm.length - 1))
        runs.append(out)
    assert runs[0][2] is not None and runs[0][5] is not None
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_bad_input_is_one_line(tmp_path, library):
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(3), ("Q4_1", "Q4_1"))
    lm = native.NativeLM(path, max_len=8)
    for bad, match in [([], "at least one token"), ([64], "token ids"), ([-1], "token ids"), (list(range(9)), "max_len")]:
        with pytest.raises(ValueError, match=match):
            lm.forward(bad)
    assert lm.length == 0  # nothing half-appended
    with pytest.raises(ValueError, match="last"):
        lm.forward([1, 2], last=3)
    with pytest.raises(ValueError, match="trim"):
        lm.trim(1)
    for kw, match in [({"threads": 0}, "threads"), ({"threads": True}, "threads"), ({"max_len": 10**6}, "max_len")]:
        with pytest.raises(ValueError, match=match):
            native.NativeLM(path, **kw)
    f32 = write_tiny_llama(tmp_path / "f.gguf", np.random.default_rng(3), ("F32", "Q4_1"))
    with pytest.raises(ValueError, match="F32; the native decoder"):
        native.NativeLM(f32)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError):
        native.NativeLM(cut)


def test_a_missing_build_says_how_to_build(tmp_path):
    with pytest.raises(native.NativeError, match="native build"):
        native.load(tmp_path / "libheron_lm-none.so")


def test_build_refuses_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(native.NativeError, match="no C compiler"):
        native.build(tmp_path / "lib.so")
    assert not (tmp_path / "lib.so").exists()


def test_smollm2_keeps_the_dequantized_models_greedy_tokens(library):
    torch = pytest.importorskip("torch")
    from heron.models.lm.gguf_file import load_gguf_with_tokenizer

    path = smollm2_gguf()
    model, tok, _ = load_gguf_with_tokenizer(path)
    ids = tok.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n").ids
    lm = native.NativeLM(path, max_len=256)
    seq, logits = list(ids), lm.forward(ids, last=1)
    for _ in range(16):
        seq.append(int(logits[-1].argmax()))
        logits = lm.forward(seq[-1:], last=1)
    with torch.no_grad():
        ref = model(torch.tensor([seq])).logits[0].numpy()
    assert seq[len(ids):] == [int(t) for t in ref[len(ids) - 1:-1].argmax(-1)]
    assert np.abs(logits[-1] - ref[-1]).max() < 0.05 * np.abs(ref[-1]).max()


def test_load_lm_runs_a_gguf_file_on_the_native_engine(tmp_path, library):
    """heron.load_lm(..., engine="native"): the file's tokenizer, greedy generation through the one plain loop,
    speculation exact (prompt lookup and the draft head return plain decoding's tokens), and options that do not
    apply refused."""
    import heron

    path = smollm2_gguf()
    lm = heron.load_lm(path, engine="native")
    assert isinstance(lm.backend, native.NativeLM) and lm.model is None and lm.chat_template is not None
    ids = lm.encode(lm.chat_prompt([{"role": "user", "content": "Name three colors, then repeat them."}]))
    opts = heron.GenerationOptions(max_new_tokens=24)
    plain = [t.id for t in lm.generate(ids, opts)]
    assert len(plain) >= 3 and lm.decode(plain).strip()
    looked = [t.id for t in lm.generate(ids, opts, speculative=heron.SpeculativeOptions(method="lookup"))]
    assert looked == plain
    stats = heron.DecodeStats()  # the shipped draft head on the native decoder's hidden states: plain's tokens
    headed = [t.id for t in lm.generate(ids, opts, heron.SpeculativeOptions(method="head", adaptive=False), stats)]
    assert headed == plain and stats.rounds > 0 and sum(stats.windows) > 0
    for kw, match in [({"compute": "int8x2"}, "compute"), ({"experts": 2}, "experts"), ({"weights": "int8"}, "weights"),
                      ({"device": "cuda"}, "device")]:
        with pytest.raises(ValueError, match=match):
            heron.load_lm(path, engine="native", **kw)
    with pytest.raises(ValueError, match="runs GGUF files"):
        heron.load_lm(tmp_path, engine="native")


def test_int8_activations_speculate_exactly(library):
    """heron.load_lm(..., engine="native", compute="int8"): the layers' inputs rounded to int8; prompt lookup and the
    draft head return its own plain decoding's tokens (its steps compute what its blocks compute)."""
    import heron

    lm = heron.load_lm(smollm2_gguf(), engine="native", compute="int8")
    assert lm.backend.activations == "int8"
    ids = lm.encode(lm.chat_prompt([{"role": "user", "content": "Write a haiku about rain, then repeat it."}]))
    opts = heron.GenerationOptions(max_new_tokens=32)
    plain = [t.id for t in lm.generate(ids, opts)]
    assert len(plain) >= 3
    for method in ("lookup", "head"):
        stats = heron.DecodeStats()
        got = [t.id for t in lm.generate(ids, opts, heron.SpeculativeOptions(method=method, adaptive=False), stats)]
        assert got == plain and stats.rounds > 0, method


def test_the_native_engine_takes_the_usable_cores_by_default(library, monkeypatch):
    """threads=None (load_lm's and the CLI's default): the native decoder runs on the CPUs this process may use, at
    most NATIVE_THREADS; a number given is kept; the other engines keep 1."""
    import heron
    from heron import lm as sdk_lm

    for usable, want in [({0}, 1), (set(range(12)), sdk_lm.NATIVE_THREADS), ({0, 1}, 2)]:
        monkeypatch.setattr(sdk_lm.os, "sched_getaffinity", lambda pid, u=usable: u)
        assert sdk_lm.native_default_threads() == want
    path = smollm2_gguf()
    assert heron.load_lm(path, engine="native").backend.threads == 2  # two usable CPUs (the last patch)
    assert heron.load_lm(path, engine="native", threads=3).backend.threads == 3
    with pytest.raises(ValueError, match="threads"):
        heron.load_lm(path, engine="native", threads=0)


def test_the_cli_chats_on_the_native_engine():
    import subprocess
    import sys

    smollm2_gguf()
    p = subprocess.run([sys.executable, "-m", "heron", "lm", "chat", "--model", "smollm2", "--engine", "native",
                        "--prompt", "What is the capital of France?", "--max-new-tokens", "16"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-500:]
    assert "Paris" in p.stdout
    p = subprocess.run([sys.executable, "-m", "heron", "lm", "chat", "--model", "smollm2", "--speculative", "head",
                        "--prompt", "What is the capital of France?", "--max-new-tokens", "16"],
                       capture_output=True, text=True, timeout=300)  # engine auto: the head drafts for the native decoder
    assert p.returncode == 0, p.stderr[-500:]
    assert "Paris" in p.stdout


def test_the_cli_drafts_with_the_head_by_default_where_it_fits(library):
    """heron lm generate / chat's default --speculative auto: the shipped draft head (with prompt lookup) for SmolLM2
    on the native decoder, the same greedy answer as plain decoding; plain decoding where no head fits (lm-nano, the
    onnxruntime engine, --fast-steps); the head's flags refused in one line where it would not draft."""
    import heron
    from heron.cli import build_parser
    from heron.cli_lm import _load

    smollm2_gguf()

    def load(*argv):
        return _load(build_parser().parse_args(["lm", *argv]))

    lm, spec, opts = load("chat", "--prompt", "x", "--max-new-tokens", "24")
    assert isinstance(lm.backend, native.NativeLM) and spec.method == "head"
    assert lm.auto_speculation() == spec  # the SDK's choice (LanguageModel.auto_speculation), which the CLI takes
    messages = [{"role": "user", "content": "Name three rivers in Europe."}]
    stats = heron.DecodeStats()
    drafted = [t.id for t in lm.chat(messages, opts, spec, stats)]
    assert drafted == [t.id for t in lm.chat(messages, opts)] and stats.target_calls < len(drafted)
    assert load("chat", "--prompt", "x", "--gamma", "3")[1].gamma == 3
    for argv in (("chat", "--prompt", "x", "--speculative", "none"), ("chat", "--prompt", "x", "--engine", "onnx"),
                 ("generate", "x")):
        assert load(*argv)[1] is None, argv
    assert heron.load_lm("smollm2", engine="onnx").auto_speculation() is None
    with pytest.raises(ValueError, match="--gamma applies where --speculative auto drafts"):
        load("generate", "x", "--gamma", "3")
    with pytest.raises(ValueError, match="--kappa applies to --speculative mirror only"):
        load("chat", "--prompt", "x", "--kappa", "1")


def test_the_cache_says_which_tokens_it_holds(tmp_path, library):
    """cached_tokens: the token at every cached position, through forward (in chunks too), trim, restore, reset and a
    cache that grows."""
    lm = native.NativeLM(write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(2), ("Q4_1", "Q8_0")))
    lm.reserve(4)
    lm.forward([5, 6, 7])
    block = [(10 + 7 * i) % 64 for i in range(native.CHUNK + 3)]
    lm.forward(block, last=1)  # past the room reserved, in two chunks
    want = [5, 6, 7, *block]
    assert lm.cached_tokens() == want
    lm.trim(native.CHUNK)
    mark = lm.snapshot()
    lm.forward([1, 2])
    assert lm.cached_tokens() == want[:-native.CHUNK] + [1, 2]
    lm.restore(mark)
    assert lm.cached_tokens() == want[:-native.CHUNK]
    lm.reset()
    assert lm.cached_tokens() == []


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_prompt_cache_keeps_the_shared_prefix_and_the_same_words(tmp_path, library, temperature):
    """decoding.start_cache: with reuse_prefix a generation computes only the part of its prompt that the cache does
    not hold (the prompt's last token always); the words are an empty cache's, greedy and sampled, plain and
    drafted, also after calls made on the backend directly (the cache, not the engine, says what it holds)."""
    from heron.runtime.decoding import DecodeStats, GenerationOptions, lookup, plain

    lm = native.NativeLM(write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(3), ("Q4_1", "Q8_0")))
    opts = GenerationOptions(max_new_tokens=12, temperature=temperature, seed=4)
    turn1 = [1, 7, 9, 3, 12, 3, 12, 5]

    def run(method, prompt, reuse):
        lm.reuse_prefix = reuse
        stats = DecodeStats()
        return [t.id for t in method(lm, prompt, opts, stats=stats)], stats.prompt_cached

    for method in (plain, lookup):
        lm.reset()
        first, kept = run(method, turn1, True)
        assert kept == 0
        turn2 = turn1 + first + [2, 8, 30]  # the conversation so far and a new message
        cold, kept = run(method, turn2, False)
        assert kept == 0
        assert run(method, turn1, False)[0] == first  # the cache holds turn 1 and its answer (bar its last word)
        kept_words, kept = run(method, turn2, True)
        assert kept_words == cold and kept >= len(turn1) + len(first) - 1
        again, kept = run(method, turn2, True)  # the same prompt again: only its last token is fed
        assert again == kept_words and kept == len(turn2) - 1
        lm.trim(lm.length - 5)
        lm.forward([40, 41])  # made on the backend directly: positions 5 and 6 now hold other tokens
        assert run(method, turn2, True) == (kept_words, 5)
    lm.reuse_prefix = False


@pytest.mark.parametrize("engine", ["native", "onnx"])
def test_a_chat_turn_computes_its_new_message_only(library, engine):
    """LanguageModel.prompt_cache (on by default on the native decoder and on onnxruntime's graphs with shared buffers
    and exact steps): the second turn of a SmolLM2 conversation keeps the first turn's positions and answers what it
    answers with the cache off, plain and with the draft head (and prompt lookup); off with --no-prompt-cache, and
    refused where steps are not exact (--fast-steps) or the target is torch."""
    import heron
    from heron.cli import build_parser
    from heron.cli_lm import _load

    smollm2_gguf()
    lm = heron.load_lm("smollm2", engine=engine, **({"compute": "int8"} if engine == "onnx" else {}))
    assert lm.prompt_cache
    opts = heron.GenerationOptions(max_new_tokens=16)
    for spec in (None, heron.SpeculativeOptions(method="head")):
        answers, kept = {}, {}
        for cache in (True, False):
            lm.prompt_cache = cache
            messages = [{"role": "user", "content": "Name a river in France."}]
            first = "".join(t.text for t in lm.chat(messages, opts, spec))
            messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And one in Spain?"}]
            stats = heron.DecodeStats()
            answers[cache] = [t.id for t in lm.chat(messages, opts, spec, stats)]
            kept[cache] = stats.prompt_cached
        assert answers[True] == answers[False] and kept[False] == 0
        assert kept[True] > len(lm.encode(lm.chat_prompt(messages[:1]))), kept
    argv = ["lm", "chat", "--prompt", "x", "--engine", engine, "--no-prompt-cache"]
    assert not _load(build_parser().parse_args(argv))[0].prompt_cache
    if engine == "onnx":
        fast = heron.load_lm("smollm2", engine="onnx", compute="int8", exact_steps=False)
        assert not fast.prompt_cache
        with pytest.raises(ValueError, match="the prompt cache runs on heron's native decoder and on onnxruntime"):
            fast.prompt_cache = True
        with pytest.raises(ValueError, match="prompt_cache must be True or False"):
            heron.load_lm("smollm2", prompt_cache="yes")
        nano = heron.load_lm()  # lm-nano on torch
        assert not nano.prompt_cache
        with pytest.raises(ValueError, match="this target computes every prompt whole"):
            nano.prompt_cache = True


def test_a_conversation_longer_than_the_context_loses_its_oldest_turns(library, monkeypatch, capsys):
    """LanguageModel.fit_messages: the latest turns that leave the answer its room (system messages and the last turn
    kept, whole turns left out from the oldest); heron lm chat goes on past its context instead of failing."""
    import io

    import heron
    from heron.cli import build_parser
    from heron.cli_lm import _chat

    smollm2_gguf()
    lm = heron.load_lm("smollm2")
    lm.backend.max_len = 160  # a short context, which the conversations below outgrow
    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"Question {i}: name a colour."},
                 {"role": "assistant", "content": "Blue, like the sky on a clear day."}]
    msgs.append({"role": "user", "content": "And a fruit?"})

    def size(m):
        return len(lm.encode(lm.chat_prompt(m)))

    kept = lm.fit_messages(msgs, 40)
    start = msgs.index(kept[1])
    assert kept == msgs[:1] + msgs[start:] and kept[1]["role"] == "user" and 3 <= start < len(msgs) - 1
    assert size(kept) + 40 <= 160 < size(msgs[:1] + msgs[start - 2:]) + 40  # one turn more would not fit
    assert lm.fit_messages(msgs, 0) != kept and lm.fit_messages(msgs[:1] + msgs[start:], 40) == kept
    assert lm.fit_messages(msgs, 10_000) == [msgs[0], msgs[-1]]  # no room anywhere: the last turn alone
    encode, calls = lm.encode, []
    monkeypatch.setattr(lm, "encode", lambda text: calls.append(text) or encode(text))
    assert lm.fit_messages(msgs, 40) == kept and len(calls) <= 3  # 7 turns: a bisection, not one encoding per turn
    monkeypatch.undo()
    with pytest.raises(ValueError, match="room must be an integer"):
        lm.fit_messages(msgs, -1)
    monkeypatch.setattr(heron, "load_lm", lambda *a, **k: lm)
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\n" * 8))
    args = build_parser().parse_args(["lm", "chat", "--model", "smollm2", "--max-new-tokens", "24",
                                      "--speculative", "none"])
    assert _chat(args) == 0
    out, err = capsys.readouterr()
    assert "outgrew the model's context of 160 tokens" in err and len(out.strip().splitlines()) >= 8


def test_a_conversation_keeps_its_turns(library):
    """LanguageModel.conversation: say() answers with the turns before it (the words lm.chat gives for the same
    messages, the prompt cache keeping the earlier turns), keeps each answer as it streams (closed early: what was
    said), leaves the conversation as it was on bad input, and cuts its oldest turns where the context runs out."""
    import heron

    smollm2_gguf()
    lm = heron.load_lm("smollm2")
    opts = heron.GenerationOptions(max_new_tokens=12)
    chat = lm.conversation("Be brief.", opts)
    first = [t.text for t in chat.say("Name a river in France.")]
    assert chat.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Name a river in France."},
                             {"role": "assistant", "content": "".join(first)}]
    stats = heron.DecodeStats()
    second = [t.id for t in chat.say("And one in Spain?", stats)]
    assert stats.prompt_cached > 20 and chat.messages[-2]["content"] == "And one in Spain?"
    lm.prompt_cache = False
    assert second == [t.id for t in lm.chat(chat.messages[:-1], opts)]
    lm.prompt_cache = True
    before = [dict(m) for m in chat.messages]
    for bad in ("", "  ", 3, None):
        with pytest.raises(ValueError):
            chat.say(bad)
    assert chat.messages == before
    answer = chat.say("Count from one to twenty.")
    word = next(answer).text
    answer.close()
    assert chat.messages[-1] == {"role": "assistant", "content": word} and len(chat.messages) == len(before) + 2
    with pytest.raises(ValueError, match="options must be a GenerationOptions"):
        lm.conversation(options={"max_new_tokens": 4})
    with pytest.raises(ValueError, match="has no chat template"):
        heron.load_lm().conversation()
    lm.backend.max_len = 120  # a short context: every few turns the oldest go
    short = lm.conversation(options=opts)
    for i in range(8):
        assert [t.text for t in short.say(f"Question {i}: name a colour.")]
    assert short.dropped >= 4 and short.messages[0]["role"] == "user" and len(short.messages) + short.dropped == 16
    assert len(lm.encode(lm.chat_prompt(short.messages[:-1]))) + 12 <= 120  # the last turn had its room


def test_weights_are_rounded_to_ggml_q4_1_blocks():
    """round_q4_1: its nibbles, scales and offsets as ggml's Q4_1 bytes dequantize (runtime.gguf's reference) to
    d q + m; from the range alone every weight within half a step (and the fp16 scales' rounding); the least-squares
    refits lower the error; a constant block is exact; bad input is one line."""
    from heron.runtime.gguf import dequantize
    from heron.runtime.native.head import round_q4_1

    rng = np.random.default_rng(12)
    w = rng.standard_normal((5, 3, 32)).astype(np.float32) * np.array([1e-3, 1.0, 40.0], np.float32)[:, None]
    w[0, 0] = 0.25  # a constant block
    errs = {}
    for refits in (0, 3):
        nib, d, m = round_q4_1(w, refits)
        assert nib.shape == (5, 3, 16) and nib.dtype == np.uint8 and d.dtype == m.dtype == np.float16
        raw = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8), nib], -1)  # ggml's block
        deq = dequantize(raw.reshape(-1), 3).reshape(w.shape)
        q = np.concatenate([nib & 15, nib >> 4], -1).astype(np.float32)
        np.testing.assert_array_equal(deq, q * d.astype(np.float32)[..., None] + m.astype(np.float32)[..., None])
        assert np.array_equal(deq[0, 0], w[0, 0])
        errs[refits] = ((deq - w) ** 2).sum()
        if refits == 0:
            step = (w.max(-1) - w.min(-1)) / 15
            assert (np.abs(deq - w) <= (0.5 + 1e-2) * step[..., None] + 1e-3 * np.abs(w).max(-1, keepdims=True)).all()
    assert errs[3] < errs[0]
    for bad in (w[..., :16], w[0], np.full((1, 1, 32), np.nan, np.float32)):
        with pytest.raises(ValueError, match="finite blocks of 32"):
            round_q4_1(bad)


def test_rows_are_grouped_eight_to_a_vector_as_the_library_reads_them():
    """group_rows: rows in groups of eight, a block's eight rows side by side; groups in units of two (the last unit
    padded with zero rows), a unit's two groups side by side pair by pair; every value, scale and offset lands where
    heron_lm.c's layout comment says."""
    rng = np.random.default_rng(5)
    n, nb = 21, 3
    for width in (16, 32):  # nibbles, int8
        values = rng.integers(0, 256, (n, nb, width), dtype=np.uint8)
        d = rng.standard_normal((n, nb)).astype(np.float16)
        m = rng.standard_normal((n, nb)).astype(np.float16)
        qs, gd, gm = native.group_rows(values, d, m)
        assert qs.shape == (2, nb, width // 2, 2, 8, 2) and gd.shape == gm.shape == (2, nb, 2, 8)
        for r in range(32):
            u, rest = divmod(r, 16)
            g, lane = divmod(rest, 8)
            for b in range(nb):
                want = values[r, b] if r < n else np.zeros(width, np.uint8)
                assert np.array_equal(qs[u, b, :, g, lane, :].reshape(-1), want)  # pair i: bytes 2i, 2i + 1
                assert gd[u, b, g, lane] == (d[r, b] if r < n else 0) and gm[u, b, g, lane] == (m[r, b] if r < n else 0)
    assert native.group_rows(values[:8], d[:8], None)[2] is None


def test_a_native_target_prices_its_verify_calls_by_its_kernels_table(tmp_path, library):
    """Every table of what k draft tokens add to a step (NativeLM.VERIFY_TABLES, by SIMD level and one thread or
    more) is one decoding.verify_costs accepts (a malformed one would silently fall back to one price per token), and
    a native target carries the table of its own kernels and team."""
    from heron.runtime import decoding

    N = native.NativeLM
    for key, table in N.VERIFY_TABLES.items():
        assert decoding.verify_costs(type("T", (), {"verify_costs": table})()) == table, key
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(3), ("Q4_1", "Q4_0"))
    simd = native.load().hl_simd()
    for threads in (1, 2, 3):
        lm = native.NativeLM(path, threads=threads)
        assert decoding.verify_costs(lm) == N.VERIFY_TABLES.get((simd, min(threads, 2)))
        assert decoding.verify_cost(lm) == N.VERIFY_COSTS[simd]
        lm8 = native.NativeLM(path, threads=threads, activations="int8")  # the same prices (int8's own lost on S)
        assert decoding.verify_costs(lm8) == decoding.verify_costs(lm) and decoding.verify_cost(lm8) == lm.verify_cost


def test_the_default_engine_is_native_where_it_is_built(monkeypatch, library):
    """engine="auto" on a GGUF file: the native decoder where it is built and nothing asks for another engine
    (compute, experts, a device); otherwise onnxruntime. A native target refuses speculative methods other than
    prompt lookup and the draft head in one line, naming the engines that run them."""
    import heron
    from heron.runtime.lm import OnnxLM

    lm = heron.load_lm("smollm2")
    assert isinstance(lm.backend, native.NativeLM)
    assert isinstance(heron.load_lm("smollm2", compute="int8x2").backend, OnnxLM)
    with pytest.raises(ValueError, match="--engine onnx or torch"):
        list(lm.generate("Hello", heron.GenerationOptions(max_new_tokens=2),
                         speculative=heron.SpeculativeOptions(method="mirror")))
    with pytest.MonkeyPatch.context() as mp:  # a file the native decoder refuses (another architecture, F16
        def refuse(*a, **k):                   # linears): onnxruntime's engine takes it
            raise ValueError("not a file for the native decoder")
        mp.setattr(native, "NativeLM", refuse)
        assert isinstance(heron.load_lm("smollm2").backend, OnnxLM)
        with pytest.raises(ValueError, match="not a file for the native decoder"):
            heron.load_lm("smollm2", engine="native")  # asked for by name: its own error
    monkeypatch.setattr(native, "available", lambda: False)  # not built here: onnxruntime, as before
    assert isinstance(heron.load_lm("smollm2").backend, OnnxLM)


@pytest.mark.parametrize("march,simd", [("x86-64-v3", 1), ("x86-64", 0), ("native -mno-avx512bw", 2),
                                        ("x86-64-v3 -mavxvnni", 2)])
def test_the_avx2_and_portable_kernels_compute_the_same_model(tmp_path, library, march, simd):
    """The kernels another CPU gets: AVX2 without VNNI (multiply-add then add: the same integers, so the same bits as
    VNNI's fused multiply-add), VNNI on 256-bit vectors (this CPU without AVX-512BW: the tiles of 2 x 4 tokens, where
    this CPU's build has 512-bit tiles; and AVX-VNNI's, on a CPU that has it) and the portable C (another order of float sums: close), each with steps equal
    to blocks. x86-64 only (the -march names)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the variants' -march names are x86-64's")
    if simd == 2 and native.load().hl_simd() != 3:
        pytest.skip("256-bit VNNI tiles are built here from a CPU with AVX-512 VNNI; this one has none")
    if "avxvnni" in march:
        from pathlib import Path
        cpuinfo = Path("/proc/cpuinfo")
        if not (cpuinfo.is_file() and " avx_vnni" in cpuinfo.read_text()):
            pytest.skip("this CPU has no AVX-VNNI (VNNI on 256-bit vectors without AVX-512)")
    flags = tuple(x for f in native.CFLAGS for x in ((f"-march={march}".split() if f == "-march=native" else [f])))
    try:
        lib = native.build(tmp_path / f"lib-{march.split()[0]}.so", flags)
    except native.NativeError as e:
        pytest.skip(f"this compiler cannot build -march={march}: {e}")
    path = write_tiny_llama(tmp_path / "t.gguf", np.random.default_rng(5), ("Q4_1", "Q8_0"), untied=True)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    ours = native.NativeLM(path, library=lib)
    assert native.load(lib).hl_simd() == simd
    assert ours.verify_cost == native.NativeLM.VERIFY_COSTS[simd] >= native.NativeLM.VERIFY_COSTS[3]  # dearer blocks
    variant = ours.forward(tokens)
    default = native.NativeLM(path).forward(tokens)
    if simd and native.load().hl_simd() >= 1:
        assert np.array_equal(variant, default)
    else:
        np.testing.assert_allclose(variant, default, atol=1e-3 * np.abs(default).max())  # as close as to torch
    ours.reset()
    ours.forward(tokens[:5])
    assert all(np.array_equal(ours.forward([t], last=1)[0], variant[i]) for i, t in zip(range(5, 8), tokens[5:]))
    # int8 activations (vpmaddubsw's int16 sums on AVX2, vpdpbusd with VNNI): the same integers, the same bits
    path4 = write_tiny_llama(tmp_path / "t4.gguf", np.random.default_rng(6), ("Q4_1", "Q4_0"), untied=True)
    ours8 = native.NativeLM(path4, library=lib, activations="int8")
    variant8 = ours8.forward(tokens)
    default8 = native.NativeLM(path4, activations="int8").forward(tokens)
    if simd and native.load().hl_simd() >= 1:
        assert np.array_equal(variant8, default8)
    else:
        np.testing.assert_allclose(variant8, default8, atol=1e-3 * np.abs(default8).max())
    ours8.reset()
    ours8.forward(tokens[:5])
    assert all(np.array_equal(ours8.forward([t], last=1)[0], variant8[i]) for i, t in zip(range(5, 8), tokens[5:]))
