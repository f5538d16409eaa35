"""The JavaScript runtime (runtime/js, Node + onnxruntime-node) against the Python runtime: same best
score per file (within 1e-3), same detections and times (within one encoder frame) on TTS and real
clips, and the same one-line refusals for tampered keyword files and bundles."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import edit_keyword_file, edit_manifest
from heron.runtime.keyword_file import write_keyword_file
from heron.runtime.spotter import KeywordSpotter

JS = Path(__file__).resolve().parents[1] / "runtime" / "js"
NODE = shutil.which("node")
ORT_NODE = JS / "node_modules" / "onnxruntime-node"
REAL = Path(os.environ.get("HERON_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "real_speech"

pytestmark = pytest.mark.skipif(NODE is None or not ORT_NODE.is_dir(),
                                reason="needs node and runtime/js/node_modules (make setup: npm install --ignore-scripts "
                                       "--prefix runtime/js)")
KEYWORDS = ("hey heron", "snowboy", "view glass")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from heron.export.kws_mobile import write_mobile_bundle

    d = tmp_path_factory.mktemp("js")
    mobile = write_mobile_bundle(None, d / "mobile")
    full = KeywordSpotter.load()
    kwfiles = [write_keyword_file(full.keyword_file(full.enroll(t)), d / f"{t.replace(' ', '_')}.kw") for t in KEYWORDS]
    return d, mobile, kwfiles


def _clips(d: Path) -> list[Path]:
    """20 mono 16 kHz int16 WAVs: TTS clips with and without a keyword, and real recordings when present."""
    import soundfile as sf

    from heron.synth import test_clip

    out = []
    texts = ["hey heron", "snowboy", "view glass", "hey there", "good morning", "heron", "view class", "snow boy"]
    for i, t in enumerate(texts):
        audio, sr, _ = test_clip(t, seed=i + 1, snr_db=15.0 + i)
        p = d / f"tts_{i}.wav"
        sf.write(p, audio, sr, subtype="PCM_16")
        out.append(p)
    real = []
    if REAL.is_dir():
        for sub, n in (("keywords/snowboy", 4), ("keywords/view_glass", 4), ("sentences", 3), ("words", 1)):
            real += sorted((REAL / sub).glob("*.wav"))[:n]
    if len(real) < 12:  # no real recordings here: more TTS (the parity claim is about the loop, not the voices)
        for i in range(12 - len(real)):
            audio, sr, _ = test_clip(["snowboy", "view glass", "the weather"][i % 3], seed=20 + i, snr_db=10.0)
            p = d / f"tts_extra_{i}.wav"
            sf.write(p, audio, sr, subtype="PCM_16")
            real.append(p)
    return out + real[:12]


def _node(*args, check=True):
    p = subprocess.run([NODE, str(JS / "cli.js"), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_js_scores_and_times_match_python(setup):
    import soundfile as sf

    d, mobile, kwfiles = setup
    clips = _clips(d)
    assert len(clips) == 20
    args = ["--bundle", mobile]
    for k in kwfiles:
        args += ["--keyword-file", k]
    rows = [json.loads(line) for line in _node(*args, *clips).stdout.splitlines()]
    got = {(r["file"], r["keyword"]): r for r in rows}
    sp = KeywordSpotter.load(mobile)
    kws = [sp.add_keyword_file(k) for k in kwfiles]
    fired = 0
    fs = sp.frame_seconds
    for clip in clips:
        pcm, sr = sf.read(clip, dtype="int16")
        assert sr == 16000
        st = sp.stream(kws)
        st.track_best = True
        dets = st.accept(pcm) + st.flush()
        for kw in kws:
            r = got[(str(clip), kw.name)]
            score, start, end = st.best[kw.name]
            assert abs(r["score"] - score) <= 1e-3, (clip, kw.name, r["score"], score)
            assert abs(r["start_s"] - start) <= fs + 1e-9 and abs(r["end_s"] - end) <= fs + 1e-9
            mine = [x for x in dets if x.keyword == kw.name]
            assert len(r["detections"]) == len(mine), (clip, kw.name)
            for a, b in zip(r["detections"], mine):
                assert abs(a["start_s"] - b.start_s) <= fs + 1e-9 and abs(a["end_s"] - b.end_s) <= fs + 1e-9
                assert [w["word"] for w in a["words"]] == [w.word for w in b.words]
                for wa, wb in zip(a["words"], b.words):
                    assert abs(wa["start_s"] - wb.start_s) <= fs + 1e-9 and abs(wa["end_s"] - wb.end_s) <= fs + 1e-9
            fired += len(mine)
    assert fired >= 3  # the comparison covers real detections, not only silence


@pytest.mark.parametrize("case, message", [
    ("threshold", "checksum mismatch"),
    ("truncated", "not a heron keyword file"),
    ("other_bundle", "made for another bundle"),
    ("huge_arrays", "classes: one id per phoneme"),
    ("huge_file", "too large for a keyword file"),
    ("max_frames", "is not this bundle's rule"),
])
def test_js_refuses_tampered_keyword_files_as_python_does(setup, tmp_path, case, message):
    _, mobile, kwfiles = setup
    src = kwfiles[0]
    bad = tmp_path / "bad.kw"
    data = src.read_bytes()
    if case == "threshold":
        bad.write_bytes(data.replace(b'"threshold":', b'"threshold":0.01,"x":'))
    elif case == "truncated":
        bad.write_bytes(data[:-40])
    elif case == "other_bundle":
        edit_keyword_file(src, bad, lambda b: b.update(bundle_sha256="0" * 64))
    elif case == "huge_arrays":
        edit_keyword_file(src, bad, lambda b: b.update(classes=list(range(1, 40)) * 100))
    elif case == "huge_file":
        bad.write_bytes(data + b" " * 70_000)
    elif case == "max_frames":
        edit_keyword_file(src, bad, lambda b: b.update(max_frames=9999))
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    p = _node("--bundle", mobile, "--keyword-file", bad, wav, check=False)
    assert p.returncode != 0 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    with pytest.raises(ValueError, match=message):
        KeywordSpotter.load(mobile).add_keyword_file(bad)


def test_js_refuses_edited_bundles_and_bad_audio(setup, tmp_path):
    import soundfile as sf

    _, mobile, kwfiles = setup
    edited = tmp_path / "edited"
    shutil.copytree(mobile, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["calibration"]["threshold"] = 0.01
    (edited / "manifest.json").write_text(json.dumps(m))
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    p = _node("--bundle", edited, "--keyword-file", kwfiles[0], wav, check=False)
    assert p.returncode != 0 and "the bundle was edited" in p.stderr
    escaped = tmp_path / "escaped"
    shutil.copytree(mobile, escaped)
    outside = tmp_path / "outside.onnx"
    shutil.copy(escaped / "encoder.int8.onnx", outside)
    (escaped / "encoder.int8.onnx").unlink()
    (escaped / "encoder.int8.onnx").symlink_to(outside)
    p = _node("--bundle", escaped, "--keyword-file", kwfiles[0], wav, check=False)
    assert p.returncode != 0 and "leaves the bundle" in p.stderr
    rate = tmp_path / "8k.wav"
    sf.write(rate, np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    notwav = tmp_path / "x.wav"
    notwav.write_bytes(b"hello")
    p = _node("--bundle", mobile, "--keyword-file", kwfiles[0], rate, notwav, wav, check=False)
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert p.returncode == 1 and [r["score"] is None for r in rows] == [True, True, False]
    assert "8000 Hz" in rows[0]["error"] and "not a WAV file" in rows[1]["error"]


def test_mobile_bundle_carries_the_embedding_head_and_js_runs_it(setup, tmp_path):
    """The mobile bundle keeps the shipped bundle's embedding head (its section and three graphs); the
    head moves the scores (the parity test above compares scores with it at work), and --no-head gives the
    first stage alone in both runtimes."""
    import soundfile as sf

    from heron.export.kws_mobile import write_mobile_bundle

    d, mobile, kwfiles = setup
    m = json.loads((mobile / "manifest.json").read_text())
    assert m["embedding_head"] == json.loads((Path(KeywordSpotter.load().bundle.root) / "manifest.json")
                                             .read_text())["embedding_head"]
    for key in ("speech_embedding_mel", "speech_embedding", "embedding_head", "embedding_notice"):
        assert (mobile / m["files"][key]["path"]).is_file()
    bare = write_mobile_bundle(None, tmp_path / "bare", head=False)
    assert "embedding_head" not in json.loads((bare / "manifest.json").read_text())
    assert not (bare / "acoustic").exists()
    clips = _clips(d)[8:14]  # real (or TTS) clips with the keywords
    args = [a for k in kwfiles for a in ("--keyword-file", k)]
    head = {(r["file"], r["keyword"]): r["score"] for r in map(json.loads, _node("--bundle", mobile, *args, *clips).stdout.splitlines())}
    first = {(r["file"], r["keyword"]): r["score"] for r in map(json.loads, _node("--bundle", bare, *args, *clips).stdout.splitlines())}
    assert head.keys() == first.keys()
    assert max(abs(head[k] - first[k]) for k in head) > 0.05  # the head is at work
    sp = KeywordSpotter.load(bare)
    kws = [sp.add_keyword_file(k) for k in kwfiles]
    for clip in clips:
        pcm, _ = sf.read(clip, dtype="int16")
        st = sp.stream(kws)
        st.track_best = True
        st.accept(pcm), st.flush()
        for kw in kws:
            assert abs(st.best[kw.name][0] - first[(str(clip), kw.name)]) <= 1e-3


@pytest.mark.parametrize("case, message", [
    ("offset", "embedding_head.offset"),
    ("unknown", "embedding_head"),
    ("no_graph", "speech_embedding"),
])
def test_js_refuses_an_edited_head_section_as_python_does(setup, tmp_path, case, message):
    """A re-signed manifest whose head section is out of range, has unknown fields or lost a graph is
    refused in one line by both runtimes."""
    import soundfile as sf

    from heron.runtime.bundle import BundleError

    _, mobile, kwfiles = setup
    b = tmp_path / "b"
    shutil.copytree(mobile, b)
    change = {"offset": lambda m: m["embedding_head"].update(offset=5.0),
              "unknown": lambda m: m["embedding_head"].update(scale=2.0),
              "no_graph": lambda m: m["files"].pop("speech_embedding")}[case]
    edit_manifest(b, change)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    p = _node("--bundle", b, "--keyword-file", kwfiles[0], wav, check=False)
    assert p.returncode != 0 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    with pytest.raises(BundleError, match=message):
        KeywordSpotter.load(b)


def test_js_refuses_a_reordered_class_table(setup, tmp_path):
    """A manifest re-signed with its phoneme table reordered would mislabel every frame: both runtimes refuse it."""
    import soundfile as sf

    from heron.runtime.bundle import BundleError

    _, mobile, kwfiles = setup
    b = tmp_path / "b"
    shutil.copytree(mobile, b)
    edit_manifest(b, lambda m: m["phonemes"]["classes"].__setitem__(slice(1, 3), m["phonemes"]["classes"][2:0:-1]))
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    p = _node("--bundle", b, "--keyword-file", kwfiles[0], wav, check=False)
    assert p.returncode != 0 and "heron's order" in p.stderr
    with pytest.raises(BundleError, match="heron's order"):
        KeywordSpotter.load(b)


def test_js_cli_takes_a_long_file_list(setup, tmp_path):
    """onnxruntime's graph loader recurses deeply; on Node's main thread a long argument list (600 paths,
    ~30 KB) left it too little stack and the CLI died of a segmentation fault. It now runs in a worker
    thread with its own 64 MB stack."""
    import soundfile as sf

    _, mobile, kwfiles = setup
    wav = tmp_path / "silence-with-a-long-enough-name-for-the-argument-list.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    p = _node("--bundle", mobile, "--keyword-file", kwfiles[0], *([wav] * 600))
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 600 and all(r["score"] is not None for r in rows)
    p = _node("--help", check=False)
    assert p.returncode == 0 and "usage:" in p.stdout
