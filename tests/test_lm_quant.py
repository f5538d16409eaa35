"""heron.models.lm.quant: weight-only int8 / int4 linears, one path for every weight source."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from heron.models.lm.model import LMConfig, Transformer  # noqa: E402
from heron.models.lm.quant import (QuantEmbedding, QuantStack, WeightOnlyLinear, quantize_int4, quantize_model,  # noqa: E402
                                   unpack_int4, weight_bytes)


def _model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(LMConfig(**kw)).eval()


def test_int8_groups_error_is_half_a_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    q = WeightOnlyLinear.from_linear(lin, 8)
    blocks = lin.weight.detach().reshape(48, 2, 32)
    step = blocks.abs().amax(dim=-1, keepdim=True) / 127
    err = (q.dequantize().reshape(48, 2, 32) - blocks).abs()
    assert (err <= step / 2 + 1e-7).all() and err.max() > 0 and q.scale.shape == (48, 2)
    odd = WeightOnlyLinear.from_linear(torch.nn.Linear(40, 8), 8)  # 32 does not divide 40: one group per row
    assert odd.group == 40 and odd.scale.shape == (8, 1)
    x = torch.randn(3, 5, 64)
    assert torch.allclose(q(x), torch.nn.functional.linear(x, q.dequantize(), lin.bias), atol=1e-5)
    assert q.q.dtype == torch.int8 and q.bias is not None


def test_large_linear_dequantizes_rows_in_slices(monkeypatch):
    """A vocabulary-sized linear runs slice by slice (bounded scratch memory) with the same outputs."""
    import heron.models.lm.quant as quant

    torch.manual_seed(4)
    lin = torch.nn.Linear(64, 40, bias=True)
    x = torch.randn(2, 3, 64)
    for bits in (8, 4):
        q = WeightOnlyLinear.from_linear(lin, bits)
        whole = q(x)
        monkeypatch.setattr(quant, "ROWS_AT_ONCE", 16)
        assert torch.allclose(q(x), whole, atol=1e-6) and whole.shape == (2, 3, 40)
        monkeypatch.setattr(quant, "ROWS_AT_ONCE", 4096)


def test_loaders_hold_the_file_tensors():
    """Transformer.with_weights (every loader): no tensor left on the meta device, the tied head is the
    embedding itself, the same logits as a model built and loaded the old way."""
    from heron.models.lm import checkpoint
    from heron.paths import default_lm_path

    model, _, _ = checkpoint.load(default_lm_path())
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert model.lm_head.weight is model.embed.weight
    old = Transformer(model.cfg)
    old.load_state_dict(model.state_dict())
    tokens = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.equal(old(tokens).logits, model(tokens).logits)
    bad = {k: v for k, v in model.state_dict().items() if k != "norm.weight"}
    _, missing, _ = Transformer.with_weights(model.cfg, bad)
    assert missing == ["norm.weight"]


def test_int4_groups_error_and_codes():
    torch.manual_seed(1)
    w = torch.randn(16, 96)
    packed, scale, zero = quantize_int4(w)
    codes = unpack_int4(packed)
    assert packed.shape == (16, 48) and codes.max() <= 15 and scale.shape == (16, 3)
    g = w.reshape(16, 3, 32)
    # each group's minimum and maximum get codes 0 and 15 exactly
    assert (codes.reshape(16, 3, 32).amin(-1) == 0).all() and (codes.reshape(16, 3, 32).amax(-1) == 15).all()
    lin = torch.nn.Linear(96, 16, bias=False)
    lin.weight.data.copy_(w)
    deq = WeightOnlyLinear.from_linear(lin, 4).dequantize().reshape(16, 3, 32)
    assert ((deq - g).abs() <= scale[..., None] / 2 + 1e-6).all()


def test_int4_gives_back_q4_1_blocks():
    """A GGUF Q4_1 block (fp16 scale d and minimum m, codes 0..15 spanning the block) dequantized and
    quantized again comes back as the same codes, scale d and zero m + 8 d: GGUF weights going through
    quantize_model are not rounded a second time."""
    rng = np.random.default_rng(2)
    N, K = 8, 64
    d = rng.uniform(0.001, 0.05, (N, K // 32)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.5, 0.0, (N, K // 32)).astype(np.float16).astype(np.float32)
    codes = rng.integers(0, 16, (N, K // 32, 32))
    codes[..., 0], codes[..., 1] = 0, 15  # llama.cpp's Q4_1: the block's min and max are codes 0 and 15
    w = torch.from_numpy((codes * d[..., None] + m[..., None]).reshape(N, K).astype(np.float32))
    packed, scale, zero = quantize_int4(w)
    assert torch.equal(unpack_int4(packed).reshape(N, K // 32, 32).long(), torch.from_numpy(codes))
    assert torch.allclose(scale, torch.from_numpy(d), rtol=1e-5)
    assert torch.allclose(zero, torch.from_numpy(m + 8 * d), atol=1e-6)


def test_int8_gives_back_q8_0_blocks():
    """GGUF Q8_0 (fp16 scale d per 32, codes in [-127, 127] reaching +-127): codes and scales come back."""
    rng = np.random.default_rng(3)
    d = rng.uniform(0.001, 0.05, (6, 4)).astype(np.float16).astype(np.float32)
    codes = rng.integers(-127, 128, (6, 4, 32))
    codes[..., 5] = 127
    w = torch.from_numpy((codes * d[..., None]).reshape(6, 128).astype(np.float32))
    lin = torch.nn.Linear(128, 6, bias=False)
    lin.weight.data.copy_(w)
    q = WeightOnlyLinear.from_linear(lin, 8)
    assert torch.equal(q.q.reshape(6, 4, 32).long(), torch.from_numpy(codes))
    assert torch.allclose(q.scale, torch.from_numpy(d), rtol=1e-6) and torch.equal(q.dequantize(), w)
    emb = torch.nn.Embedding(6, 128)
    emb.weight.data.copy_(w)
    assert torch.equal(QuantEmbedding.from_embedding(emb)(torch.tensor([[5, 0]]))[0], w[[5, 0]])


def test_quantize_model_close_to_fp32_and_smaller():
    ref = _model()
    tokens = torch.randint(0, ref.cfg.vocab_size, (1, 24))
    with torch.no_grad():
        want = ref(tokens).logits
    fp32_layers = weight_bytes(ref.layers)
    for bits, tol in ((8, 0.02), (4, 0.3)):  # error relative to the logits' spread
        m = quantize_model(_model(), bits)
        assert all(isinstance(mod, WeightOnlyLinear) for name, mod in m.named_modules()
                   if name.startswith("layers.") and name.rsplit(".", 1)[-1].endswith("proj"))
        assert isinstance(m.embed, QuantEmbedding) and m.lm_head.bits == 8
        assert not any(isinstance(mod, torch.nn.Linear) for mod in m.modules())
        with torch.no_grad():
            got = m(tokens).logits
        rel = float((got - want).norm() / (want - want.mean(-1, keepdim=True)).norm())
        assert 0 < rel < tol, (bits, rel)
        # int8: 1 byte + a scale per 32 (0.28 of fp32); int4: half a byte + a scale and a zero per 32 (0.19)
        assert weight_bytes(m.layers) < fp32_layers * (0.3 if bits == 8 else 0.2)


def test_quantize_model_refusals():
    m = quantize_model(_model(), 8)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(m, 8)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_model(_model(), 3)
    with pytest.raises(ValueError, match="do not divide the input of layers.0"):
        quantize_model(_model(dim=200, n_heads=5, n_kv_heads=5, head_dim=40), 4)


def test_load_lm_torch_weights_int8_int4():
    """The SDK's torch targets take weights=int8 / int4 (through quantize_model) and refuse other names."""
    import heron
    from heron.runtime.decoding import GenerationOptions

    ref = heron.load_lm()  # the shipped lm-nano checkpoint (torch)
    prompt = ref.tokenizer.encode("def add(a, b):")
    want = ref.backend.forward(prompt)
    for weights, tol in (("int8", 0.02), ("int4", 0.3)):  # error relative to the logits' spread
        lm = heron.load_lm(weights=weights)
        assert isinstance(lm.model.lm_head, WeightOnlyLinear) and isinstance(lm.model.layers[0].ffn.w_gate, QuantStack)
        got = lm.backend.forward(prompt)
        rel = np.linalg.norm(got - want) / np.linalg.norm(want - want.mean(-1, keepdims=True))
        assert got.shape == want.shape and rel < tol, (weights, rel)
        assert len(list(lm.generate(prompt, GenerationOptions(max_new_tokens=4)))) == 4
    with pytest.raises(ValueError, match="weights must be one of fp32, int8, int4"):
        heron.load_lm(weights="int2")


def test_quantizing_while_loading_equals_quantizing_the_loaded_model():
    """load_quantized (a loader's tensor stream, quantized layer by layer) gives the same weights and logits
    as quantize_model on the whole fp32 model; a tensor of the wrong shape or name is refused."""
    from heron.models.lm import checkpoint
    from heron.models.lm.quant import load_quantized
    from heron.paths import default_lm_path

    ref, _, _ = checkpoint.load(default_lm_path())
    state = {k: v.clone() for k, v in ref.state_dict().items() if k != "lm_head.weight"}  # tied: the table
    tokens = torch.tensor([[3, 17, 250, 9, 1]])
    for bits in (8, 4):
        whole = quantize_model(Transformer.with_weights(ref.cfg, {k: v.clone() for k, v in state.items()})[0], bits)
        order = sorted(state, reverse=True)  # any order: here layers last-first, the table last
        streamed, missing, unexpected = load_quantized(ref.cfg, ((k, state[k].clone()) for k in order), bits)
        assert missing == [] and unexpected == []
        assert not any(t.is_meta for t in list(streamed.parameters()) + list(streamed.buffers()))
        assert isinstance(streamed.layers[0].attn.q_proj, WeightOnlyLinear) and isinstance(streamed.embed, QuantEmbedding)
        with torch.no_grad():
            assert torch.equal(streamed(tokens).logits, whole(tokens).logits)
    _, missing, unexpected = load_quantized(ref.cfg, [("norm.weight", state["norm.weight"]), ("extra", state["norm.weight"])], 8)
    assert "embed.weight" in missing and unexpected == ["extra"]
    with pytest.raises(ValueError, match="tensor norm.weight is"):
        load_quantized(ref.cfg, [("norm.weight", torch.zeros(3))], 8)


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@needs_onednn
def test_packed_linear_is_f_linear_up_to_summation_order_and_only_for_inference():
    """PackedLinear: fp32 inference on a CPU through oneDNN's packed copy (the same products as F.linear up to
    summation order, for one row and for blocks); with gradients on it is F.linear itself (training is untouched and
    gradients reach the weight); a weight changed in place is copied again before the next call."""
    from heron.models.lm.quant import PackedLinear, pack_linears

    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=True), torch.nn.Linear(96, 40, bias=False))
    assert pack_linears(seq) == 2 and all(type(m) is PackedLinear for m in seq)
    lin = seq[0]
    for shape in ((1, 64), (1, 9, 64), (2, 3, 64)):
        x = torch.randn(*shape)
        with torch.no_grad():
            got, want = lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert lin._packed is not None  # inference used the packed copy
    x = torch.randn(4, 64)
    y = lin(x)  # gradients on: F.linear, bit for bit
    assert torch.equal(y, torch.nn.functional.linear(x, lin.weight, lin.bias)) and y.requires_grad
    y.sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    with torch.no_grad():
        lin.weight.mul_(2.0)  # changed in place: the next inference call must see it
        assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)
    with torch.no_grad():  # another dtype takes F.linear
        wide = PackedLinear(64, 8).double()
        assert torch.equal(wide(x.double()), torch.nn.functional.linear(x.double(), wide.weight, wide.bias))
    assert pack_linears(seq) == 0  # already packed: nothing more to do
    import copy

    twin = copy.deepcopy(seq)  # a copy leaves the oneDNN copy behind and makes its own when used
    assert twin[0]._packed is None
    with torch.no_grad():
        assert torch.allclose(twin(x), seq(x), atol=1e-5) and twin[0]._packed is not None


@needs_onednn
def test_pack_linears_leaves_large_models_and_traced_graphs_alone():
    """Above max_bytes nothing is packed (the copy would double the linears' memory); a traced module records F.linear
    (an export sees the ordinary graph, no oneDNN op)."""
    from heron.models.lm.quant import PackedLinear, pack_linears

    big = torch.nn.Sequential(torch.nn.Linear(64, 64))
    assert pack_linears(big, max_bytes=64 * 64 * 4 - 1) == 0 and type(big[0]) is torch.nn.Linear
    assert pack_linears(big, max_bytes=64 * 64 * 4) == 1 and type(big[0]) is PackedLinear
    with torch.no_grad():
        traced = torch.jit.trace(big, torch.randn(2, 64))
    graph = str(traced.inlined_graph)
    assert "aten::linear" in graph and "mkldnn" not in graph


@needs_onednn
def test_torch_backend_runs_its_cpu_linears_packed_with_the_models_own_logits():
    """heron's torch backend packs its model's linears on a CPU; a prompt and then single steps through it give the
    logits the model gave through F.linear before, up to summation order (a tolerance, not bits: the two libraries
    add in different orders on different CPUs)."""
    from heron.models.lm.backend import TorchLM
    from heron.models.lm.model import KVCache
    from heron.models.lm.quant import PackedLinear

    ref = _model(3, vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64)
    prompt, steps = [5, 17, 42, 7], [9, 123, 250]
    cache = KVCache(ref.cfg, batch=1, max_len=64)
    with torch.no_grad():
        want = [ref(torch.tensor([prompt]), cache).logits[0, -1]]
        want += [ref(torch.tensor([[t]]), cache).logits[0, -1] for t in steps]
    backend = TorchLM(ref)
    assert sum(type(m) is PackedLinear for m in ref.modules()) == 2 * 7 + 1  # 7 linears a layer, the tied head
    got = [backend.forward(prompt, last=1)[-1]] + [backend.forward([t], last=1)[-1] for t in steps]
    assert all(m._packed is not None for m in ref.modules() if type(m) is PackedLinear)  # inference ran packed
    for g, w in zip(got, want):
        assert np.allclose(g, w.numpy(), atol=1e-4)
