"""Google's speech_embedding through heron.runtime.speech_embedding: frame counts, windows, bad input."""
import numpy as np
import pytest

from heron.runtime import speech_embedding as se


@pytest.fixture(scope="module")
def emb():
    try:
        return se.SpeechEmbedding(se.openwakeword_models_dir())
    except RuntimeError as e:
        pytest.skip(f"{e}")


def test_frame_count_formula_matches_the_graphs(emb):
    rng = np.random.default_rng(0)
    for n in [0, 100, 511, 512, 12511, 12512, 12513, 13791, 13792, 16000, 48000]:
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        out = emb.embed(x)
        assert out.shape == (se.n_frames(n), se.DIM), n
        assert out.dtype == np.float32


def test_frame_i_is_the_window_starting_at_80_ms_times_i(emb):
    """Frame i depends only on audio from 1280 i samples on, for audio without silence (the mel graph floors
    its output relative to its input's loudest part)."""
    x = (0.1 * np.random.default_rng(1).standard_normal(48000)).astype(np.float32)
    whole = emb.embed(x)
    window = se.MEL_FFT + (se.WINDOW_FRAMES - 1) * se.MEL_HOP  # samples of one embedding
    step = se.STEP_FRAMES * se.MEL_HOP
    for i in (0, 5, len(whole) - 1):
        alone = emb.embed(x[step * i: step * i + window])
        assert alone.shape == (1, se.DIM)
        np.testing.assert_allclose(alone[0], whole[i], atol=1e-4)


def test_speech_and_silence_differ(emb):
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    silence = np.zeros(16000, np.float32)
    a, b = emb.embed(tone), emb.embed(silence)
    assert np.abs(a - b).max() > 1.0


@pytest.mark.parametrize("bad, msg", [(np.full(16000, np.nan, np.float32), "NaN"),
                                      (np.zeros((16000, 2), np.float32), "mono")])
def test_bad_audio_is_refused(emb, bad, msg):
    with pytest.raises(ValueError, match=msg):
        emb.embed(bad)


def test_missing_graphs_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="openwakeword"):
        se.SpeechEmbedding(tmp_path)


@pytest.fixture(scope="module")
def sequence_emb(emb):
    """The same graphs with the embedding graph in the sequence form bundles carry."""
    pytest.importorskip("onnx", reason="the sequence form is written by heron.export (pip install heron[export])")
    from heron.export.embedding_head import sequence_speech_embedding

    return sequence_speech_embedding()


def test_the_sequence_form_gives_the_window_graphs_frames(emb, sequence_emb):
    assert not emb.sequence and sequence_emb.sequence
    x = (0.1 * np.random.default_rng(2).standard_normal(40000)).astype(np.float32)
    np.testing.assert_allclose(sequence_emb.embed(x), emb.embed(x), atol=1e-4)
    spec = emb.mels(x)
    frames = np.array([0, 1, 2, 7, 9, 10, 20])  # three runs of neighbours, each one call
    np.testing.assert_allclose(sequence_emb.from_mels(spec, frames), emb.from_mels(spec, frames), atol=1e-4)
    assert sequence_emb.embed(x[:12000]).shape == (0, se.DIM)  # shorter than one window


def test_frames_outside_the_mels_are_refused(emb, sequence_emb):
    spec = emb.mels(np.zeros(16000, np.float32))
    for e in (emb, sequence_emb):
        with pytest.raises(ValueError, match="outside"):
            e.from_mels(spec, np.array([0, 99]))


def test_the_rewrite_refuses_other_graphs_and_keeps_its_own(tmp_path):
    pytest.importorskip("onnx", reason="the sequence form is written by heron.export (pip install heron[export])")
    from heron.export.embedding_head import sequence_embedding_graph

    try:
        d = se.openwakeword_models_dir()
    except RuntimeError as e:
        pytest.skip(f"{e}")
    with pytest.raises(ValueError, match="not the speech_embedding graph"):
        sequence_embedding_graph(d / se.MEL_FILE)
    once = tmp_path / "seq.onnx"
    once.write_bytes(sequence_embedding_graph(d / se.EMBEDDING_FILE))
    assert sequence_embedding_graph(once) == once.read_bytes()
