"""Encoder behaviour: streaming == whole utterance (gates open, closed, really skipped), training smoke."""
import pytest

torch = pytest.importorskip("torch")

from heron.models.conformer import PRESETS, GatedConformer, gate_cost_weights  # noqa: E402


def _model(seed=0, random_gates=True):
    torch.manual_seed(seed)
    m = GatedConformer(PRESETS["tiny"]).eval()
    if random_gates:  # make some gates close so skipping is exercised
        for b in m.blocks:
            torch.nn.init.normal_(b.gate.weight, std=0.5)
            torch.nn.init.normal_(b.gate.bias, std=1.0)
    return m


@pytest.mark.parametrize("skip", [False, True])
def test_streaming_equals_whole_utterance(skip):
    m = _model()
    c = m.config
    n_chunks = 9  # longer than the attention's left context
    wav = torch.randn(1, c.chunk_samples * n_chunks) * 0.1
    with torch.no_grad():
        lp, emb, probs = m(wav)
        st = m.init_state(1)
        outs, embs, gates = [], [], []
        for i in range(n_chunks):
            l, e, g, st = m.forward_chunk(wav[:, i * c.chunk_samples:(i + 1) * c.chunk_samples], st, skip=skip)
            outs.append(l), embs.append(e), gates.append(g)
    assert (probs < 0.5).any() and (probs > 0.5).any(), "test needs both open and closed gates"
    assert torch.allclose(torch.cat(outs, 1), lp, atol=1e-5)
    assert torch.allclose(torch.cat(embs, 1), emb, atol=1e-5)
    assert torch.allclose(torch.stack(gates, 2), probs, atol=1e-6)


def test_partial_chunk_is_padded_and_wrong_chunk_rejected():
    m = _model()
    c = m.config
    with torch.no_grad():
        lp, _, _ = m(torch.randn(2, c.chunk_samples + 100))
    assert lp.shape[:2] == (2, 2 * c.chunk_frames)
    with pytest.raises(ValueError, match="samples"):
        m.forward_chunk(torch.zeros(1, c.chunk_samples - 1), m.init_state(1))


def test_closed_gates_leave_the_residual_unchanged():
    m = _model(random_gates=False)
    for b in m.blocks:
        torch.nn.init.constant_(b.gate.bias, -10.0)  # every gate closed
    with torch.no_grad():
        x = torch.randn(1, m.config.chunk_frames * 2, m.config.d_model)
        y, _ = m.blocks[0](x, m.chunk_mask(x.shape[1]))
    assert torch.allclose(y, m.blocks[0].norm(x), atol=1e-6)


def test_gate_gradients_flow_through_straight_through_estimator():
    m = _model(random_gates=False)
    m.train()
    lp, _, probs = m(torch.randn(2, m.config.chunk_samples * 2) * 0.1)
    (lp.mean() + (probs * gate_cost_weights(m.config)).sum()).backward()
    assert m.blocks[0].gate.weight.grad is not None and m.blocks[0].gate.weight.grad.abs().sum() > 0


def test_presets_fit_the_parameter_budget():
    n = sum(p.numel() for p in GatedConformer(PRESETS["base"]).parameters())
    assert n <= 2_000_000


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_training_smoke_resumes_and_writes_safetensors(tmp_path):
    from dataclasses import replace

    from heron.models.train_kws import TRAIN_PRESETS, load_encoder, read_checkpoint, train

    cfg = replace(TRAIN_PRESETS["smoke"], steps=6, ckpt_every=3, pool_size=12, batch_size=2)
    train(cfg, tmp_path, progress=False)
    tensors, meta = read_checkpoint(tmp_path)
    assert meta["step"] == 6 and any(k.startswith("opt.") for k in tensors)
    train(replace(cfg, steps=9), tmp_path, progress=False)
    model, meta = load_encoder(tmp_path)
    assert meta["step"] == 9
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert lines and "ctc" in lines[0]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from heron.models.train_kws import load_encoder

    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid heron checkpoint"):
        load_encoder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "missing")


def test_a_block_started_as_identity_adds_nothing():
    torch.manual_seed(0)
    m = GatedConformer(PRESETS["tiny"]).eval()
    blk = m.blocks[1]
    blk.start_as_identity()
    x = torch.randn(2, m.config.chunk_frames * 2, m.config.d_model)
    y, _ = blk(x, m.chunk_mask(x.shape[1]))
    assert torch.allclose(y, blk.norm(x), atol=1e-6)


@pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None, reason="espeak-ng not installed")
def test_grown_fine_tune_keeps_the_trained_blocks(tmp_path):
    from dataclasses import replace

    from heron.models.train_kws import TRAIN_PRESETS, load_encoder, read_checkpoint, save_checkpoint, train

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init", GatedConformer(PRESETS["tiny"]), None, 0, TRAIN_PRESETS["smoke"])
    cfg = replace(TRAIN_PRESETS["smoke"], steps=1, pool_size=4, batch_size=2, lr=1e-9, warmup=1,
                  init=str(tmp_path / "init"), grow_layers=1)
    train(cfg, tmp_path / "run", progress=False)
    model, meta = load_encoder(tmp_path / "run")
    init = read_checkpoint(tmp_path / "init")[0]
    assert meta["model_config"]["n_layers"] == PRESETS["tiny"].n_layers + 1 == len(model.blocks)
    sd = model.state_dict()
    assert all(torch.allclose(sd[k[6:]], v.float(), atol=1e-6) for k, v in init.items()
               if k.startswith("model.") and v.is_floating_point())  # lr ~0: the trained blocks are the init's
    assert float(model.blocks[-1].attn.out.weight.abs().max()) < 1e-6  # the new block started as an identity
    with pytest.raises(ValueError, match="needs --init"):
        train(replace(cfg, init=""), tmp_path / "run2", progress=False)


def test_weight_files_are_readable_like_any_file_the_user_writes(tmp_path):
    """safetensors leaves its files at 0600; heron's checkpoints, releases and adapters get the mode the
    umask gives new files."""
    import os

    from heron.models.weights_io import save_safetensors

    old = os.umask(0o022)
    try:
        p = save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors", {"k": "v"})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
