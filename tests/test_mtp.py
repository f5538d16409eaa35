"""Multi-token prediction with gated LoRA: the adapter leaves the base model bit-identical, mask groups
never leak into regular tokens, and MTP generation equals plain decoding token for token."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from heron.models.lm.backend import TorchLM  # noqa: E402
from heron.models.lm.model import Layout, Transformer, preset  # noqa: E402
from heron.models.lm.mtp import MTPConfig, group_layout, load_adapter, save_adapter, train_mtp, generate_mtp  # noqa: E402
from heron.runtime import decoding as sp  # noqa: E402
from heron.runtime.tokenizer import vocabulary_record  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = Transformer(preset("tiny", n_layers=2, vocab_size=64, max_seq_len=96)).eval()
    ids = np.tile(np.arange(40, dtype=np.int32), 50)  # a repetitive "code-like" stream MTP can learn
    ref = base(torch.arange(20)[None]).logits.detach().clone()
    mtp = train_mtp(base, ids, MTPConfig(n_masks=3, rank=4), steps=60, seq_len=32, batch=2, n_anchors=8)
    return base, mtp, ref


def test_adapter_keeps_base_bit_identical(trained):
    base, mtp, ref = trained
    assert any(p.abs().sum() > 0 for n, p in mtp.named_parameters() if n.endswith(".B"))  # the LoRA is non-zero
    with torch.no_grad():
        assert torch.equal(base(torch.arange(20)[None]).logits, ref)
    # the shared base is never rewired: its projections are its own plain layers, before and after a call
    assert all(type(getattr(b.attn, n)) is torch.nn.Linear for b in base.layers for n in ("q_proj", "o_proj"))
    with torch.no_grad():
        mtp.forward_block(torch.arange(5)[None], torch.full((5,), -1), None)
    assert all(type(getattr(b.attn, n)) is torch.nn.Linear for b in base.layers for n in ("q_proj", "o_proj"))


def test_regular_tokens_never_see_masks(trained):
    base, mtp, ref = trained
    slots, pos, allowed = group_layout(20, [2, 9, 19], 3, 0)
    with torch.no_grad():
        logits, _ = mtp.forward_block(torch.cat([torch.arange(20)[None], torch.zeros(1, 9, dtype=torch.long)], 1),
                                      slots, Layout(pos, allowed))
    assert (logits[:, :20] - ref).abs().max() < 1e-5
    assert not allowed[:20, 20:].any()


def test_mtp_generation_is_lossless_and_speculates(trained, tmp_path):
    base, mtp, _ = trained
    T = TorchLM(base)
    calls = 0
    for prompt in ([1, 2, 3], [7], [30, 31, 32, 33, 34, 35], [5, 5, 5, 5]):
        opts = sp.GenerationOptions(max_new_tokens=40)
        ref = [t.id for t in sp.plain(T, prompt, opts)]
        st = sp.DecodeStats()
        assert [t.id for t in generate_mtp(mtp, T, prompt, opts, st)] == ref
        assert [t.id for t in generate_mtp(mtp, T, prompt, opts, n_drafts=2)] == ref  # shorter mask groups
        calls += st.target_calls
    assert calls < 4 * 40  # drafts were accepted: fewer target forwards than tokens
    # the end of the context is handled exactly like plain decoding
    ref = [t.id for t in sp.plain(T, [1, 2], sp.GenerationOptions(max_new_tokens=500))]
    assert [t.id for t in generate_mtp(mtp, T, [1, 2], sp.GenerationOptions(max_new_tokens=500))] == ref
    # save / load round trip
    vocab = vocabulary_record(base.cfg.vocab_size)
    save_adapter(mtp, tmp_path / "a", {"test": True}, vocab)
    again = load_adapter(base, tmp_path / "a", vocab)
    assert [t.id for t in generate_mtp(again, T, [1, 2, 3], sp.GenerationOptions(max_new_tokens=20))] == \
        [t.id for t in sp.plain(T, [1, 2, 3], sp.GenerationOptions(max_new_tokens=20))]
    (tmp_path / "a" / "mtp.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"^the MTP adapter \(.*\): \d+ logits; the target: 49152 logits: it was made"):
        load_adapter(base, tmp_path / "a", vocabulary_record(49152))  # made for another model: refused first
    with pytest.raises(ValueError):
        load_adapter(base, tmp_path / "a", vocab)


def test_mtp_runs_on_the_engine_with_the_targets_routing(trained):
    """MTP is a backend of the one decoding engine: the target's own backend (its cache and routing) is
    used, so dial-k applies (k=1 here: the same tokens as plain decoding with k=1, in fewer forwards)."""
    base, mtp, _ = trained
    T1 = TorchLM(base, k=1)
    opts = sp.GenerationOptions(max_new_tokens=30)
    ref = [t.id for t in sp.plain(T1, [1, 2, 3], opts)]
    st = sp.DecodeStats()
    assert [t.id for t in generate_mtp(mtp, T1, [1, 2, 3], opts, st)] == ref
    assert st.rounds > 0 and st.target_calls < 30
