"""The phoneme head on speech_embedding frames (heron.models.embedding_head): shapes, training, save/resume."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from heron.models.embedding_head import (WEIGHTS, EmbeddingHead, HeadConfig, HeadTrainConfig, load_head, log_probs,
                                         train_head)

TINY = HeadConfig(n_classes=5, hidden=16, layers=1, dropout=0.0)


def toy_data(n=24, seed=0):
    """Frames whose first 4 dimensions say the class: a head can learn it, a random one cannot."""
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for _ in range(n):
        y = rng.integers(1, 5, size=3)
        frames = np.concatenate([np.repeat(np.eye(96, dtype=np.float32)[[c - 1]] * 3, 3, axis=0) for c in y])
        X.append((frames + 0.05 * rng.standard_normal(frames.shape)).astype(np.float16))
        Y.append(y.astype(np.int16))
    return X, Y


def test_two_outputs_per_frame_of_log_probabilities():
    m = EmbeddingHead(TINY).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 7, 96))
    assert y.shape == (2, 14, 5)
    np.testing.assert_allclose(y.exp().sum(-1).numpy(), 1.0, atol=1e-5)


def greedy_errors(model, X, Y):
    errs = 0
    for x, y in zip(X, Y):
        a = log_probs(model, x).argmax(-1)
        seq = [int(c) for i, c in enumerate(a) if c != 0 and (i == 0 or c != a[i - 1])]
        errs += seq != list(y)
    return errs


def test_training_learns_the_toy_task_and_saves_each_epoch(tmp_path):
    X, Y = toy_data()
    before = greedy_errors(EmbeddingHead(TINY).eval(), X, Y)
    tcfg = replace(HeadTrainConfig(), epochs=80, frames_per_batch=60, warmup=5, lr=1e-2, feature_noise=0.0, frame_drop=0.0)
    model = train_head(X, Y, tmp_path, TINY, tcfg, log=lambda *_: None)
    assert (tmp_path / WEIGHTS).is_file()
    assert before >= 20 and greedy_errors(model, X, Y) <= 3
    loaded, meta = load_head(tmp_path)
    assert meta["epochs_done"] == 80 and meta["config"]["hidden"] == 16
    np.testing.assert_allclose(log_probs(loaded, X[0]), log_probs(model, X[0]), atol=1e-5)


def test_resume_continues_and_refuses_another_configuration(tmp_path):
    X, Y = toy_data(8)
    tcfg = replace(HeadTrainConfig(), epochs=2, frames_per_batch=60, warmup=1)
    train_head(X, Y, tmp_path, TINY, tcfg, log=lambda *_: None)
    said = []
    train_head(X, Y, tmp_path, TINY, replace(tcfg, epochs=3), log=said.append)
    assert said[0] == "resuming after epoch 2" and len(said) == 2  # one more epoch only
    assert load_head(tmp_path)[1]["epochs_done"] == 3
    with pytest.raises(ValueError, match="another head configuration"):
        train_head(X, Y, tmp_path, replace(TINY, hidden=8), tcfg, log=lambda *_: None)


def test_a_missing_head_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-head"):
        load_head(tmp_path)


def test_feature_cache_adds_augmented_copies_and_reads_them_back(tmp_path, monkeypatch):
    """Each copy is computed once and cached; the copies carry the clean rows' targets and hear other audio."""
    from types import SimpleNamespace

    from heron.models import embedding_head as eh
    from heron.models.data import real

    rows = [SimpleNamespace(audio=tmp_path / f"{i}.wav", text=f"row {i}", targets=(1, 2, i + 1)) for i in range(3)]
    monkeypatch.setattr(real, "read_rows", lambda source, split: rows if split == "train" else [])
    tone = (8000 * np.sin(np.arange(16000) / 5)).astype(np.int16)
    monkeypatch.setattr(real, "read_audio", lambda row: tone)
    calls = []

    class Emb:  # frames = the audio's level in 80 ms blocks: enough to tell clean from augmented audio
        def padded(self, x):
            calls.append(len(x))
            return np.abs(x[: len(x) // 1280 * 1280]).reshape(-1, 1280).mean(1, keepdims=True).repeat(96, 1)

    X, Y = eh.feature_cache(["fake"], tmp_path / "cache", emb=Emb(), augment_copies=1, log=lambda *a: None)
    assert len(X) == len(Y) == 6 and len(calls) == 6
    assert all(np.array_equal(Y[i], Y[i + 3]) for i in range(3))
    assert not np.allclose(X[0][:10].astype(np.float32), X[3][:10].astype(np.float32))
    X2, _ = eh.feature_cache(["fake"], tmp_path / "cache", emb=Emb(), augment_copies=1, log=lambda *a: None)
    assert len(calls) == 6 and all(np.array_equal(a, b) for a, b in zip(X, X2))  # both sets from the cache
    with pytest.raises(ValueError, match="preset"):
        eh.feature_cache(["fake"], tmp_path / "cache", emb=Emb(), augment_copies=1, augment="loud", log=lambda *a: None)


def test_tts_features_are_augmented_cached_and_carry_the_pool_targets(tmp_path, monkeypatch):
    """`train-head --tts N`: the TTS pool's utterances through the preset, computed once, targets kept."""
    from types import SimpleNamespace

    from heron.models import embedding_head as eh
    from heron.models import kws_data

    tone = (8000 * np.sin(np.arange(16000) / 5)).astype(np.int16)
    pool = [SimpleNamespace(text=f"text {i}", audio=tone, targets=(3, 4, i + 1)) for i in range(4)]
    asked = []
    monkeypatch.setattr(kws_data, "build_tts_pool", lambda n, seed=0: asked.append((n, seed)) or pool[:n])
    calls = []

    class Emb:
        def padded(self, x):
            calls.append(x.copy())
            return np.abs(x[: len(x) // 1280 * 1280]).reshape(-1, 1280).mean(1, keepdims=True).repeat(96, 1)

    X, Y = eh.tts_feature_cache(3, tmp_path, seed=5, emb=Emb(), log=lambda *a: None)
    assert asked == [(3, 5)] and len(X) == len(Y) == 3
    assert [tuple(y) for y in Y] == [(3, 4, 1), (3, 4, 2), (3, 4, 3)]
    clean = tone / 32768.0
    assert calls[0].shape != clean.shape or not np.allclose(calls[0], clean)  # heard through the preset
    X2, Y2 = eh.tts_feature_cache(3, tmp_path, seed=5, emb=Emb(), log=lambda *a: None)
    assert len(asked) == 2 and len(calls) == 3  # the same pool: its features from the cache
    assert all(np.array_equal(a, b) for a, b in zip(X, X2))
    pool[0] = SimpleNamespace(text="another text", audio=tone, targets=(3, 4, 1))  # e.g. a new vocabulary
    eh.tts_feature_cache(3, tmp_path, seed=5, emb=Emb(), log=lambda *a: None)
    assert len(calls) == 6  # another pool: computed again, not read from the old cache
    with pytest.raises(ValueError, match="preset"):
        eh.tts_feature_cache(3, tmp_path, augment="loud", emb=Emb(), log=lambda *a: None)


def test_an_ensemble_mixes_its_members_posteriors():
    from heron.models.embedding_head import HeadEnsemble

    torch.manual_seed(0)
    a, b = EmbeddingHead(TINY).eval(), EmbeddingHead(replace(TINY, hidden=8)).eval()
    ens = HeadEnsemble([a, b]).eval()
    x = torch.randn(1, 7, 96)
    with torch.no_grad():
        got, la, lb = ens(x), a(x), b(x)
    np.testing.assert_allclose(got.exp().numpy(), ((la.exp() + lb.exp()) / 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(got.exp().sum(-1).numpy(), 1.0, atol=1e-5)
    assert torch.equal(ens.mean, a.mean)
    with pytest.raises(ValueError, match="share their classes"):
        HeadEnsemble([a, EmbeddingHead(replace(TINY, n_classes=6))])
    with pytest.raises(ValueError, match="at least one"):
        HeadEnsemble([])


def test_load_heads_gives_one_head_or_their_ensemble(tmp_path):
    from heron.models.embedding_head import HeadEnsemble, load_heads, save_head

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        save_head(EmbeddingHead(TINY), tmp_path / name, epochs_done=2)
    one, metas = load_heads([tmp_path / "a"])
    assert isinstance(one, EmbeddingHead) and [m["epochs_done"] for m in metas] == [2]
    both, metas = load_heads([tmp_path / "a", tmp_path / "b"])
    assert isinstance(both, HeadEnsemble) and len(both.members) == 2 and len(metas) == 2
    with pytest.raises(ValueError, match="no embedding head"):
        load_heads([])


def test_the_torch_matcher_scores_as_the_runtime_matcher():
    """The confusable ranking loss trains through the keyword matcher itself: its torch form gives the
    runtime's best per-phoneme log score on each utterance's valid frames."""
    from heron.models.embedding_head import MATCH_GAP, MATCH_WEIGHT, matcher_log_scores
    from heron.runtime.ctc_kws import CTCKeywordMatcher, MatcherOptions

    torch.manual_seed(0)
    lp = torch.log_softmax(3 * torch.randn(3, 50, 40), -1)
    lengths = torch.tensor([50, 41, 20])
    phrases = [(0, np.array([5, 5, 7, 9])), (1, np.array([3, 12, 3, 20, 21])), (2, np.array([1, 2, 3, 4, 5, 6])),
               (0, np.array([8, 9, 10, 11, 12]))]
    got = matcher_log_scores(lp, lengths, phrases).numpy()
    opts = MatcherOptions(gap_penalty=MATCH_GAP, posterior_weight=MATCH_WEIGHT)
    for (b, q), g in zip(phrases, got):
        m = CTCKeywordMatcher(list(q), opts, max_frames=10**6)
        raw, _, _ = m.step(lp[b, :lengths[b]].numpy().astype(np.float64), m.init_state())
        assert g == pytest.approx(np.log(raw.max()), abs=1e-4)


def test_a_near_miss_is_a_small_edit_the_utterance_does_not_say():
    from heron.models.embedding_head import _contains, _same_class, confusable_pair

    rng, same = np.random.default_rng(0), _same_class()
    y = np.array([16, 13, 8, 2, 31, 12, 7, 1, 20, 29])  # HH EY CH AE T ER B AA K S
    for _ in range(50):
        said, nears = confusable_pair(y, rng, same, k=3)
        assert 4 <= len(said) <= 10 and _contains(y, list(said)) and 1 <= len(nears) <= 3
        for near in nears:
            assert list(near) != list(said) and not _contains(y, list(near)) and abs(len(near) - len(said)) <= 2
    assert confusable_pair(y[:3], rng, same) is None  # too short for a phrase


def test_a_confusable_fine_tune_starts_from_the_given_head(tmp_path):
    rng = np.random.default_rng(0)
    X, Y = [], []
    for _ in range(16):  # six vowels per utterance (AA..AO), each said in three frames
        y = rng.integers(1, 5, size=6)
        frames = np.concatenate([np.repeat(np.eye(96, dtype=np.float32)[[c - 1]] * 3, 3, axis=0) for c in y])
        X.append(frames.astype(np.float16))
        Y.append(y.astype(np.int16))
    cfg = replace(TINY, n_classes=40)
    base = train_head(X, Y, tmp_path / "base", cfg, HeadTrainConfig(epochs=2), log=lambda *_: None)
    said = []
    tuned = train_head(X, Y, tmp_path / "tuned", cfg,
                       HeadTrainConfig(epochs=1, init=str(tmp_path / "base"), confusable_weight=1.0, confusables=4),
                       log=said.append)
    assert said[0] == f"starting from {tmp_path / 'base'}" and "confusable ranking loss" in said[-1]
    assert torch.equal(tuned.mean, base.mean)  # the feature statistics come with the weights
    assert not torch.equal(tuned.out.weight, base.out.weight)
    with pytest.raises(ValueError, match="was started from"):  # resuming it from scratch would mix two runs
        train_head(X, Y, tmp_path / "tuned", cfg, HeadTrainConfig(epochs=2), log=lambda *_: None)
