"""Runtime (numpy + onnxruntime): bundle verification, ONNX parity, streaming API behaviour, CLI."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from heron.runtime.bundle import BundleError, load_bundle
from heron.runtime.spotter import Detection, KeywordSpotter

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

CAL = {"slope": 1.0, "offset": 0.0, "per_phoneme": 0.0, "threshold": 0.5}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A random tiny encoder exported as a bundle (behaviour tests need no trained weights)."""
    from heron.export.onnx_kws import write_bundle
    from heron.models.conformer import PRESETS, GatedConformer

    torch.manual_seed(0)
    model = GatedConformer(PRESETS["tiny"]).eval()
    for b in model.blocks:
        torch.nn.init.normal_(b.gate.weight, std=0.5)
        torch.nn.init.normal_(b.gate.bias, std=1.0)
    out = tmp_path_factory.mktemp("bundle")
    write_bundle(model, out, calibration=CAL)
    return model, out


@pytest.fixture(scope="session")
def tiny_verified(tiny, tmp_path_factory):
    """The tiny encoder plus a random second stage (text encoder + SLiCK verifier)."""
    from heron.export.onnx_kws import write_bundle
    from heron.models.matcher import MatcherConfig, SLiCKMatcher
    from heron.models.text_encoder import AudioCompliantTextEncoder, TextEncoderConfig

    model, _ = tiny
    d = model.config.d_model
    torch.manual_seed(1)
    te = AudioCompliantTextEncoder(TextEncoderConfig(d_audio=d, d_model=32), table=torch.randn(39, d)).eval()
    mt = SLiCKMatcher(MatcherConfig(d_audio=d, d_text=32, d_model=32)).eval()
    out = tmp_path_factory.mktemp("bundle_v")
    write_bundle(model, out, calibration={**CAL, "verifier": 1.0, "min_first_stage": 0.0}, verifier=(te, mt))
    return out


@pytest.fixture(scope="session")
def clip():
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(3 * t))) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bundle_checksums_refuse_tampering(tiny, tmp_path):
    _, good = tiny
    load_bundle(good)
    bad = _copy(good, tmp_path / "tampered")
    p = bad / "encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    missing = _copy(good, tmp_path / "missing")
    (missing / "encoder.int8.onnx").unlink()
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle(missing)
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(tmp_path / "nowhere")
    broken = _copy(good, tmp_path / "badjson")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(broken)
    escape = _copy(good, tmp_path / "escape")
    man = json.loads((escape / "manifest.json").read_text())
    man["files"]["encoder"]["path"] = "../../etc/passwd"
    (escape / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="outside"):
        load_bundle(escape)


def test_onnx_matches_torch_chunk_by_chunk(tiny, clip):
    model, path = tiny
    sp = KeywordSpotter.load(path)
    n = sp.chunk_samples
    audio = np.concatenate([clip, np.zeros((-len(clip)) % n, np.float32)])
    st_np, st_t = sp.init_state(), model.init_state(1)
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(audio), n):
            lp, _, _, st_np = sp.run_chunk(audio[i:i + n], st_np)
            ref, _, _, st_t = model.forward_chunk(torch.from_numpy(audio[None, i:i + n]), st_t)
            worst = max(worst, float(np.abs(lp - ref[0].numpy()).max()))
    assert worst <= 1e-4


def test_modular_encoder_skips_closed_gates_with_identical_outputs(tiny, clip):
    _, path = tiny
    mono = KeywordSpotter.load(path, skip_gates=False)
    mod = KeywordSpotter.load(path)
    assert mono.modular is None and mod.modular is not None
    lp_a, emb_a, g_a = mono.encode(clip)
    lp_b, emb_b, g_b = mod.encode(clip)
    assert np.abs(lp_a - lp_b).max() < 1e-4 and np.abs(emb_a - emb_b).max() < 1e-4
    skipped = mod.modular.skipped_fraction
    assert (skipped > 0).any(), "the random gates close some modules"
    assert np.allclose(skipped, (g_b < 0.5).mean(axis=(0, 1)))


def test_int8_encoder_loads_and_stays_close(tiny, clip):
    _, path = tiny
    lp32 = KeywordSpotter.load(path).encode(clip)[0]
    lp8 = KeywordSpotter.load(path, int8=True).encode(clip)[0]
    assert lp8.shape == lp32.shape
    assert np.mean(np.argmax(lp8, 1) == np.argmax(lp32, 1)) > 0.8


def _spotter_with_detection(path, clip, text="hey heron"):
    sp = KeywordSpotter.load(path)
    kw = sp.enroll(text)
    best, _, _ = sp.score_file(clip, kw.name)
    kw.threshold = best * 0.999  # a random model: put the threshold where the clip crosses it
    return sp


def _run(stream, audio, sizes):
    dets, i, k = [], 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        dets += stream.accept(audio[i:i + n])
        i += n
        k += 1
    return dets + stream.flush()


def test_same_detections_whatever_the_chunk_size(tiny, clip):
    _, path = tiny
    sp = _spotter_with_detection(path, clip)
    ref = _run(sp.stream(), clip, [len(clip)])
    assert ref and all(isinstance(d, Detection) for d in ref)
    for sizes in ([1, 1, 1, 7, 160], [320], [5120], [7777, 13], [1000, 3]):
        assert _run(sp.stream(), clip, sizes) == ref
    # int16 input gives the same detections as the equivalent float input
    pcm = np.round(clip * 32767).astype(np.int16)
    assert [d.keyword for d in _run(sp.stream(), pcm, [4000])] == [d.keyword for d in ref]


def test_verifier_cascade_is_chunk_size_invariant(tiny_verified, clip):
    sp = _spotter_with_detection(tiny_verified, clip)
    assert sp.verifier_session is not None and sp.keywords["hey heron"].text_embeddings is not None
    ref = _run(sp.stream(), clip, [len(clip)])
    assert ref
    for sizes in ([1000, 3], [5120], [7777, 13]):
        assert _run(sp.stream(), clip, sizes) == ref


def test_bad_input_raises_and_stream_stays_usable(tiny, clip):
    _, path = tiny
    sp = _spotter_with_detection(path, clip)
    ref = _run(sp.stream(), clip, [4000])
    st = sp.stream()
    assert st.accept(np.zeros(0, np.float32)) == []
    with pytest.raises(ValueError, match="mono"):
        st.accept(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        st.accept(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="int16"):
        st.accept(np.zeros(10, np.int32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        st.accept(np.full(10, 3.0, np.float32))
    assert _run(st, clip, [4000]) == ref  # nothing above was consumed
    st.reset()
    quiet = sp.stream()
    assert quiet.accept(np.zeros(16000 * 600, np.int16)) == []  # a 10-minute chunk in one call
    assert quiet._frames == 600 * 25  # all of it was processed (40 ms frames)
    # nothing grows with the length of an always-on stream
    assert len(quiet._buf) < sp.chunk_samples and quiet.gate_log == [] and quiet.score_log == {}


def test_reset_really_resets_and_streams_are_independent(tiny, clip):
    _, path = tiny
    sp = _spotter_with_detection(path, clip)
    ref = _run(sp.stream(), clip, [5000])
    st = sp.stream()
    st.accept(clip[:20000])
    st.reset()
    assert _run(st, clip, [5000]) == ref
    a, b = sp.stream(), sp.stream()
    da, db = [], []
    for i in range(0, len(clip), 3000):  # interleaved
        da += a.accept(clip[i:i + 3000])
        db += b.accept(np.zeros(3000, np.float32))
    assert da + a.flush() == ref


def test_other_sample_rates_are_resampled(tiny, clip):
    import soxr

    _, path = tiny
    sp = _spotter_with_detection(path, clip)
    st = sp.stream(sample_rate=44100)
    up = soxr.resample(clip, 16000, 44100).astype(np.float32)
    dets = _run(st, up, [4410])
    assert all(d.keyword == "hey heron" for d in dets)


def test_enrollment_rules(tiny):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    sp.enroll("hey heron")
    sp.enroll("view glass", sensitivity=0.9)
    with pytest.raises(ValueError, match="already enrolled"):
        sp.enroll("Hey, Heron!")
    with pytest.raises(ValueError, match="nothing pronounceable"):
        sp.enroll("")
    with pytest.raises(ValueError, match="sensitivity"):
        sp.enroll("okay", sensitivity=2)
    assert sp.keywords["view glass"].threshold < sp.keywords["hey heron"].threshold
    sp.unenroll("hey heron")
    with pytest.raises(KeyError):
        sp.unenroll("hey heron")


def test_kws_score_cli(tiny, clip, tmp_path):
    _, path = tiny
    good = tmp_path / "good.wav"
    sf.write(good, clip, 16000, subtype="PCM_16")
    wrong_rate = tmp_path / "rate.wav"
    sf.write(wrong_rate, clip, 8000)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([clip, clip], 1), 16000)
    p = subprocess.run([sys.executable, "-m", "heron", "kws", "score", "--keyword", "hey heron", "--model", str(path),
                        str(good), str(wrong_rate), str(stereo), str(tmp_path / "missing.wav")],
                       capture_output=True, text=True)
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert p.returncode == 0 and len(rows) == 4
    assert 0.0 <= rows[0]["score"] <= 1.0 and rows[0]["end_s"] > rows[0]["start_s"]
    assert rows[1]["score"] is None and "16000 Hz" in rows[1]["error"]
    assert rows[2]["score"] is None and "mono" in rows[2]["error"]
    assert rows[3]["score"] is None


def test_heron_bundle_env_selects_the_default(tiny, monkeypatch):
    _, path = tiny
    monkeypatch.setenv("HERON_BUNDLE", str(path))
    assert load_bundle().root == path
    monkeypatch.setenv("HERON_BUNDLE", str(path / "missing"))
    with pytest.raises(BundleError, match="manifest"):
        load_bundle()
