"""Real-architecture compatibility: tiny random Llama / Qwen2 / Mixtral / OLMoE / Qwen2-MoE models built
locally with `transformers` (nothing downloaded) load into heron's Transformer with the same logits."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="the HF parity tests need the dev extra (transformers)")

from heron.models.lm.hf import load_hf  # noqa: E402
from heron.models.lm.model import KVCache, Routing  # noqa: E402

COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _families():
    t = transformers
    return {
        "llama": (t.LlamaConfig, t.LlamaForCausalLM, dict(rope_theta=100000.0, tie_word_embeddings=True)),
        "qwen2": (t.Qwen2Config, t.Qwen2ForCausalLM, dict(tie_word_embeddings=False)),
        "mixtral": (t.MixtralConfig, t.MixtralForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2)),
        "olmoe": (t.OlmoeConfig, t.OlmoeForCausalLM, dict(num_experts=6, num_experts_per_tok=2)),
        "qwen2_moe": (t.Qwen2MoeConfig, t.Qwen2MoeForCausalLM,
                      dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=48, norm_topk_prob=False)),
    }


def _build(family, tmp_path, **extra):
    extra = {"mlp_only_layers": [1], **extra} if family == "qwen2_moe" else extra
    Cfg, Model, kw = _families()[family]
    torch.manual_seed(0)
    hf = Model(Cfg(**COMMON, **kw, **extra)).eval()
    with torch.no_grad():  # random norms, so a swapped norm would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("family", ["llama", "qwen2", "mixtral", "olmoe", "qwen2_moe"])
def test_logits_match_transformers(family, tmp_path):
    hf = _build(family, tmp_path)
    ours = load_hf(tmp_path)
    tokens = torch.randint(0, COMMON["vocab_size"], (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens).logits
        assert (ref - got).abs().max().item() < 1e-4
        # and the same through heron's KV cache, one block then token by token
        cache = KVCache(ours.cfg, batch=2, max_len=32)
        parts = [ours(tokens[:, :9], cache).logits] + [ours(tokens[:, i:i + 1], cache).logits for i in range(9, 17)]
        assert (torch.cat(parts, 1) - ref).abs().max().item() < 1e-4


def test_qwen2_moe_sparse_step_places_dense_layers(tmp_path):
    hf = _build("qwen2_moe", tmp_path, decoder_sparse_step=2, mlp_only_layers=[])
    ours = load_hf(tmp_path)
    assert ours.cfg.dense_layers == (0, 2)  # only layer 1 ((1 + 1) % 2 == 0) is sparse
    tokens = torch.randint(0, COMMON["vocab_size"], (1, 11))
    with torch.no_grad():
        assert (hf(tokens).logits - ours(tokens).logits).abs().max().item() < 1e-4


def test_dial_k_and_roe_work_on_loaded_models(tmp_path):
    _build("mixtral", tmp_path)
    ours = load_hf(tmp_path)
    tokens = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        k1 = ours(tokens, route=Routing(k=1)).logits
        k2 = ours(tokens).logits
        roe = ours(tokens, route=Routing(roe_samples=3, roe_tau=(0.3,) * 3)).logits
    assert not torch.allclose(k1, k2)
    assert torch.allclose(roe[:1], k2, atol=1e-5)  # sample 0 is the clean route


def test_bad_checkpoints(tmp_path):
    _build("olmoe", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="unsupported model_type"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_hf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_hf(tmp_path / "nowhere")


def test_unsupported_llama_variants_are_refused(tmp_path):
    _build("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for bad, match in (({"attention_bias": True}, "attention_bias"), ({"hidden_act": "gelu"}, "hidden_act"),
                       ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=match):
            load_hf(tmp_path)


def test_qwen2_moe_layer_placement_fields_are_checked(tmp_path):
    """decoder_sparse_step 0 raised ZeroDivisionError; an mlp_only_layers index past the model a KeyError."""
    _build("qwen2_moe", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for bad, match in (({"decoder_sparse_step": 0}, "decoder_sparse_step"),
                       ({"mlp_only_layers": [99]}, "mlp_only_layers"), ({"mlp_only_layers": "1"}, "mlp_only_layers")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=match) as e:
            load_hf(tmp_path)
        assert "\n" not in str(e.value)
