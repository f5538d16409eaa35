"""A bundle with the embedding head (heron kws add-head): the runtime's check of first-stage candidates."""
import json

import numpy as np
import pytest

from conftest import _copy
from heron.runtime.bundle import DEFAULT_BUNDLE, BundleError, write_identity
from heron.runtime.manifest import HeadCheck
from heron.runtime.spotter import KeywordSpotter

pytest.importorskip("torch")
se = pytest.importorskip("heron.runtime.speech_embedding")


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    try:
        se.openwakeword_models_dir()
    except RuntimeError as e:
        pytest.skip(str(e))
    from heron.models.embedding_head import EmbeddingHead, HeadConfig, save_head

    d = tmp_path_factory.mktemp("head")
    save_head(EmbeddingHead(HeadConfig(hidden=16, layers=1, dropout=0.0)), d, epochs_done=0)  # untrained
    return d


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """The shipped bundle without its embedding head."""
    from heron.export.embedding_head import without_embedding_head

    return without_embedding_head(DEFAULT_BUNDLE, tmp_path_factory.mktemp("first") / "b")


def _bundle(head_dir, out, **check):
    from heron.export.embedding_head import add_embedding_head

    opts = {"weight": 1.0, "min_confidence": 0.0, "offset": 0.0, "before_s": 0.4, **check}
    return add_embedding_head(DEFAULT_BUNDLE, head_dir, out, HeadCheck(**opts))


@pytest.fixture(scope="module")
def clip():
    from heron.synth import test_clip

    audio, sr, _ = test_clip("snowboy", seed=5)
    assert sr == 16000
    return audio


def _best(sp, audio, block=None):
    kw = sp.keywords.get("snowboy") or sp.enroll("snowboy")
    st = sp.stream([kw])
    st.track_best = True
    for i in range(0, len(audio), block or len(audio)):
        st.accept(audio[i:i + (block or len(audio))])
    st.flush()
    return st.best[kw.name][0]


def test_weight_zero_leaves_the_scores_as_they_were(head_dir, tmp_path, clip, monkeypatch, first_stage):
    """weight 0: every factor is 1, so the scores are the first stage's; the head still runs."""
    sp = KeywordSpotter.load(_bundle(head_dir, tmp_path / "b", weight=0.0))
    calls = []
    run = sp.run_head
    monkeypatch.setattr(sp, "run_head", lambda f: calls.append(len(f)) or run(f))
    assert _best(sp, clip) == pytest.approx(_best(KeywordSpotter.load(first_stage), clip), abs=1e-9)
    assert calls and min(calls) > 0


def test_offset_zero_only_lowers_scores_and_chunking_does_not_matter(head_dir, tmp_path, clip, first_stage):
    sp = KeywordSpotter.load(_bundle(head_dir, tmp_path / "b"))
    whole = _best(sp, clip)
    assert whole < _best(KeywordSpotter.load(first_stage), clip)  # an untrained head hears nothing: a penalty
    assert _best(sp, clip, block=1234) == pytest.approx(whole, abs=1e-9)


def test_frames_below_min_confidence_never_run_the_head_and_score_the_floor(head_dir, tmp_path, clip, monkeypatch,
                                                                           first_stage):
    sp = KeywordSpotter.load(_bundle(head_dir, tmp_path / "b", min_confidence=0.999))
    monkeypatch.setattr(sp, "run_head", lambda f: pytest.fail("the head ran"))
    assert _best(sp, clip) < 1e-6 < _best(KeywordSpotter.load(first_stage), clip)


def test_a_growing_window_computes_what_embedding_it_whole_would(head_dir, tmp_path, clip, monkeypatch):
    """The stream extends its window's embedding frames chunk by chunk, computing each inside frame once;
    with the loudest mel frame in the first chunk (the mel floor never moves) the head sees exactly the frames
    of the whole padded window."""
    from heron.runtime.spotter import _HeadEvent

    sp = KeywordSpotter.load(_bundle(head_dir, tmp_path / "b"))
    assert sp.head_features.sequence  # the bundle carries the embedding graph that takes a whole mel sequence
    audio = clip[:4 * 5120].copy()
    audio[:1600] = np.sin(2 * np.pi * 1000 * np.arange(1600) / 16000)  # the loudest mel frame first
    ev = _HeadEvent(0)
    computed = []
    run = sp.head_features.from_mels
    monkeypatch.setattr(sp.head_features, "from_mels", lambda spec, frames: computed.append(len(frames)) or run(spec, frames))
    for i in range(0, len(audio), 5120):
        got = ev.log_probs(sp, audio[i:i + 5120])
    monkeypatch.undo()
    np.testing.assert_allclose(got, sp.head_log_probs(audio), atol=1e-4)
    whole = len(sp.head_features.padded(audio))
    assert sum(computed) < 2 * whole  # kept frames are not computed again


def test_the_section_and_its_files_come_together_and_are_verified(head_dir, tmp_path):
    b = _bundle(head_dir, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    assert set(HeadCheck.FILES) <= set(m["files"]) and m["embedding_head"]["weight"] == 1.0
    no_section = _copy(b, tmp_path / "c")
    m2 = dict(m)
    del m2["embedding_head"]
    (no_section / "manifest.json").write_text(json.dumps(m2))
    write_identity(no_section)
    with pytest.raises(BundleError, match="come together"):
        KeywordSpotter.load(no_section)
    edited = _copy(b, tmp_path / "d")
    p = edited / "acoustic" / "embedding_head.onnx"
    data = bytearray(p.read_bytes())
    data[-10] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        KeywordSpotter.load(edited)


def test_bad_head_options_are_refused_before_writing(head_dir, tmp_path):
    from heron.runtime.manifest import BundleError as ManifestError

    with pytest.raises((ManifestError, ValueError), match="offset"):
        HeadCheck.from_dict({"weight": 1.0, "min_confidence": 0.1, "offset": 1.0, "before_s": 0.4},
                            "options")


def test_a_mobile_bundle_made_from_it_keeps_the_head_unless_asked_not_to(head_dir, tmp_path):
    from heron.export.kws_mobile import write_mobile_bundle

    b = _bundle(head_dir, tmp_path / "b")
    mob = write_mobile_bundle(b, tmp_path / "m")
    m = json.loads((mob / "manifest.json").read_text())
    assert m["embedding_head"] == json.loads((b / "manifest.json").read_text())["embedding_head"]
    assert set(HeadCheck.FILES) <= set(m["files"]) and KeywordSpotter.load(mob).head is not None
    mob = write_mobile_bundle(b, tmp_path / "m2", head=False)
    m = json.loads((mob / "manifest.json").read_text())
    assert "embedding_head" not in m and not (set(HeadCheck.FILES) & set(m["files"]))
    assert KeywordSpotter.load(mob).head is None


def test_the_shipped_bundle_has_the_head_and_a_copy_without_it_runs_the_first_stage(first_stage, clip):
    shipped = KeywordSpotter.load()
    assert shipped.head is not None and shipped.head_features.sequence
    assert KeywordSpotter.load(first_stage).head is None
    assert not (first_stage / "acoustic").exists()


def test_refit_offset_moves_where_the_threshold_falls_not_the_ranking(head_dir, tmp_path, clip):
    """The offset shifts every frame's score alike: a keyword's scores keep their order, and the default
    threshold's false-accept rate on the given non-keyword audio comes back to what was asked."""
    import soundfile as sf

    from heron.export.embedding_head import refit_offset
    from heron.models.calibrate_kws import real_negative_threshold

    b = _bundle(head_dir, tmp_path / "b", min_confidence=0.005)
    neg = tmp_path / "neg.wav"
    sf.write(neg, clip[:3 * 16000], 16000)
    before = [_best(KeywordSpotter.load(b), x) for x in (clip, clip[16000:])]
    fit = refit_offset(b, [str(neg)], fa_per_hour=100.0, steps=6)
    sp = KeywordSpotter.load(b)
    assert sp.head.offset == fit["offset"] != 0.0
    after = [_best(sp, x) for x in (clip, clip[16000:])]
    assert (before[0] < before[1]) == (after[0] < after[1])
    assert real_negative_threshold(sp, [str(neg)], 100.0)["threshold"] <= sp.calibration["threshold"] + 1e-6


def test_two_heads_run_as_one_graph_that_mixes_their_posteriors(head_dir, tmp_path, clip):
    import json

    import torch

    from heron.models.embedding_head import EmbeddingHead, HeadConfig, save_head

    torch.manual_seed(1)
    other = tmp_path / "other"
    other.mkdir()
    save_head(EmbeddingHead(HeadConfig(hidden=8, layers=1, dropout=0.0)), other, epochs_done=0)
    one, two = KeywordSpotter.load(_bundle(head_dir, tmp_path / "a")), KeywordSpotter.load(_bundle(other, tmp_path / "b"))
    both_dir = _bundle([head_dir, other], tmp_path / "ab")
    both = KeywordSpotter.load(both_dir)
    x = clip[:24000]
    want = np.log((np.exp(one.head_log_probs(x)) + np.exp(two.head_log_probs(x))) / 2)
    np.testing.assert_allclose(both.head_log_probs(x), want, atol=1e-4)
    about = json.loads((both_dir / "manifest.json").read_text())["model"]["embedding_head"]
    assert len(about["ensemble"]) == 2


def test_the_head_graph_stores_fp16_weights_as_fp16(head_dir, tmp_path):
    """Weights that are exactly fp16 values (the heads are kept in fp16) are stored as fp16 and cast back on load:
    half the file; add_embedding_head's export check compares the graph with torch."""
    onnx = pytest.importorskip("onnx")
    import torch
    from onnx import TensorProto

    from heron.export.embedding_head import export_head_onnx
    from heron.models.embedding_head import load_head

    model, _ = load_head(head_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    path = export_head_onnx(model, tmp_path / "h.onnx")
    types = [i.data_type for i in onnx.load(str(path)).graph.initializer]
    assert TensorProto.FLOAT16 in types


def test_phoneme_error_rate_of_a_head_hears_the_word(head_dir, clip, tmp_path):
    """`heron kws per --head`: the shipped head's greedy phonemes of a TTS clip (two sentences around
    "snowboy", held-out voices, pink noise) are close to its transcript's; an untrained head's are not; a
    checkpoint and a head together, or neither, are refused."""
    import soundfile as sf

    from heron.export.embedding_head import sequence_speech_embedding
    from heron.models.eval_per import run
    from heron.paths import models_dir

    sf.write(tmp_path / "a.wav", clip, 16000)
    text = "the weather will be cloudy this afternoon snowboy please remember to buy some milk"  # test_clip's words
    (tmp_path / "m.tsv").write_text(f"file\ttranscript\tsplit\na.wav\t{text}\ttest\n")
    m = str(tmp_path / "m.tsv")
    emb = sequence_speech_embedding(1)
    shipped = run(None, [m], tts=0, threads=1, head=models_dir() / "weights" / "embedding-head-l3", emb=emb)[m]
    untrained = run(None, [m], tts=0, threads=1, head=head_dir, emb=emb)[m]
    assert shipped["utterances"] == 1 and shipped["phonemes"] >= 40
    assert shipped["per"] <= 75 and untrained["per"] >= 2 * shipped["per"]  # measured: 60 and 330
    with pytest.raises(ValueError, match="not both or neither"):
        run(head_dir, [m], tts=0, head=head_dir, emb=emb)
    with pytest.raises(ValueError, match="not both or neither"):
        run(None, [m], tts=0)
    with pytest.raises(ValueError, match="speech_embedding frames"):
        run(None, [m], tts=0, head=head_dir)
