"""Keyword files (`heron kws enroll TEXT --out F.kw`) and mobile bundles (`heron kws export --mobile`):
what a device loads instead of enrolling, refused in one line when edited, truncated, oversized or made
for another bundle."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import edit_keyword_file, edit_manifest
from heron.runtime.keyword_file import MAX_BYTES, KeywordFileError, read_keyword_file, write_keyword_file
from heron.runtime.spotter import KeywordSpotter


@pytest.fixture(scope="module")
def shipped():
    return KeywordSpotter.load()


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    from heron.export.kws_mobile import write_mobile_bundle

    return write_mobile_bundle(None, tmp_path_factory.mktemp("mobile") / "m")


@pytest.fixture(scope="module")
def kwfile(shipped, tmp_path_factory):
    kw = shipped.enroll("hey heron", sensitivity=0.7, name="hh")
    path = write_keyword_file(shipped.keyword_file(kw), tmp_path_factory.mktemp("kw") / "hey_heron.kw")
    shipped.unenroll("hh")
    return path


def _speech():
    from heron.synth import test_clip

    audio, _, _ = test_clip("hey heron")
    return audio


def test_keyword_file_scores_exactly_as_enrolling_from_text(shipped, mobile, kwfile, tmp_path):
    from heron.export.embedding_head import without_embedding_head
    from heron.export.kws_mobile import write_mobile_bundle
    from heron.runtime.bundle import DEFAULT_BUNDLE

    audio = _speech()
    first_stage = without_embedding_head(DEFAULT_BUNDLE, tmp_path / "first")  # what a --no-head mobile bundle runs
    bare = write_mobile_bundle(None, tmp_path / "bare", head=False)
    # the mobile bundle runs the single graph (no per-module graphs, no speech gate)
    for ref_bundle, bundle, gate in ((None, None, True), (None, mobile, False), (first_stage, bare, False)):
        ref = KeywordSpotter.load(ref_bundle, speech_gate=gate)
        kw = ref.enroll("hey heron", sensitivity=0.7)
        want = ref.score_file(audio, kw.name)
        sp = KeywordSpotter.load(bundle)
        got_kw = sp.add_keyword_file(kwfile)
        assert got_kw.threshold == kw.threshold and got_kw.norm == kw.norm
        assert got_kw.pronunciation.words == ("hey", "heron")
        # same to float rounding
        assert sp.score_file(audio, got_kw.name) == pytest.approx(want, abs=1e-6)
        assert want[0] > kw.threshold  # the keyword is in the clip: the comparison is about a real detection


def test_mobile_bundle_holds_only_what_a_device_needs(mobile, shipped, tmp_path):
    from heron.export.kws_mobile import write_mobile_bundle

    m = json.loads((mobile / "manifest.json").read_text())
    head = {"speech_embedding_mel", "speech_embedding", "embedding_head", "embedding_notice"}
    assert set(m["files"]) == {"encoder_int8", "phoneme_table", "readme"} | head
    assert m["mobile"]["made_from"] == shipped.bundle.identity
    assert "speech_gate" not in m and "background" not in m["files"]
    readme = (mobile / "README.md").read_text()
    for name in ("encoder.int8.onnx", "cached_conv_3", "new_cached_key_0", "docs/runtime.md", "x64quantprecision",
                 "acoustic/embedding_head.onnx", "acoustic/melspectrogram.onnx", "section 5b"):
        assert name in readme
    bare = write_mobile_bundle(None, tmp_path / "bare", head=False)  # the first stage alone
    assert set(json.loads((bare / "manifest.json").read_text())["files"]) == {"encoder_int8", "phoneme_table", "readme"}
    total = sum(p.stat().st_size for p in bare.rglob("*"))
    assert total + 1000 <= 3_000_000  # with one keyword file: within the first mobile issue's 3 MB
    assert "embedding head" not in (bare / "README.md").read_text()
    sp = KeywordSpotter.load(mobile)
    with pytest.raises(ValueError, match="mobile bundle cannot enroll"):
        sp.enroll("hey heron")


@pytest.mark.parametrize("case, message", [
    ("threshold", "checksum mismatch"),
    ("truncated", "not a heron keyword file"),
    ("other_bundle", "made for another bundle"),
    ("huge", "too large"),
    ("classes", "do not spell its phonemes"),
    ("max_frames", "is not this bundle's rule"),
    ("znorm", "Z-norm statistics are not this bundle's"),
    ("huge_arrays", "classes: one id per phoneme"),
    ("format", "unsupported keyword file format"),
])
def test_tampered_keyword_files_are_refused_in_one_line(kwfile, tmp_path, case, message):
    bad = tmp_path / "bad.kw"
    data = kwfile.read_bytes()
    if case == "threshold":  # edited without recomputing the checksum
        bad.write_bytes(data.replace(b'"threshold":', b'"threshold":0.01,"x":'))
    elif case == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif case == "other_bundle":
        edit_keyword_file(kwfile, bad, lambda b: b.update(bundle_sha256="0" * 64))
    elif case == "huge":
        bad.write_bytes(data + b" " * MAX_BYTES)
    elif case == "classes":
        edit_keyword_file(kwfile, bad, lambda b: b.update(classes=[c % 39 + 1 for c in b["classes"][::-1]]))
    elif case == "max_frames":
        edit_keyword_file(kwfile, bad, lambda b: b.update(max_frames=10_000))
    elif case == "znorm":  # a bank is present: the statistics are recomputed and must agree
        edit_keyword_file(kwfile, bad, lambda b: b.update(znorm={"mean": -40.0, "std": 0.05}))
    elif case == "huge_arrays":
        edit_keyword_file(kwfile, bad, lambda b: b.update(classes=list(range(1, 40)) * 200))
    elif case == "format":
        bad.write_bytes(data.replace(b"heron-keyword/1", b"heron-keyword/9", 1))
    sp = KeywordSpotter.load()
    with pytest.raises(KeywordFileError, match=message) as e:
        sp.add_keyword_file(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert sp.keywords == {}  # nothing half-added


def test_keyword_file_for_the_mobile_bundle_refuses_another_mobile_bundle(kwfile, mobile, tmp_path):

    other = tmp_path / "other"
    import shutil

    shutil.copytree(mobile, other)
    edit_manifest(other, lambda m: m["mobile"].update(made_from="1" * 64))
    with pytest.raises(KeywordFileError, match="made for another bundle"):
        KeywordSpotter.load(other).add_keyword_file(kwfile)


def test_mobile_manifest_with_extra_files_is_refused(mobile, tmp_path):
    import shutil

    from heron.runtime.bundle import BundleError, load_bundle

    bad = tmp_path / "bad"
    shutil.copytree(mobile, bad)
    edit_manifest(bad, lambda m: m["files"].update(background=m["files"]["phoneme_table"]))
    with pytest.raises(BundleError, match="a mobile bundle holds only"):
        load_bundle(bad)


def test_cli_enroll_out_writes_a_keyword_file_and_export_mobile(tmp_path):
    def heron(*a, check=True):
        return subprocess.run([sys.executable, "-m", "heron", *a], capture_output=True, text=True, check=check)

    out = tmp_path / "k.kw"
    p = heron("kws", "enroll", "ok heron", "--out", str(out), "--confusables", "0", "--sensitivity", "0.3")
    assert "keyword file:" in p.stdout
    kf = read_keyword_file(out)
    assert kf.words == ("ok", "heron") and kf.threshold > 0.25  # lower sensitivity: a higher threshold
    p = heron("kws", "enroll", "ok heron", "--out", str(tmp_path), "--confusables", "0", check=False)
    assert p.returncode != 0 and "is a folder" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = heron("kws", "export", "--mobile", "--checkpoint", "x", "--out", str(tmp_path / "m"), check=False)
    assert p.returncode != 0 and "--mobile makes a bundle from a full bundle" in p.stderr
    p = heron("kws", "export", "--no-head", "--out", str(tmp_path / "m"), check=False)
    assert p.returncode != 0 and "--no-head leaves the embedding head out of a mobile bundle" in p.stderr
    assert not (tmp_path / "m").exists()
    p = heron("kws", "export", "--mobile", "--out", str(tmp_path / "m"))
    assert "mobile bundle:" in p.stdout and (tmp_path / "m" / "README.md").is_file()
    assert (tmp_path / "m" / "acoustic" / "embedding_head.onnx").is_file()
    np.testing.assert_array_equal(np.load(tmp_path / "m" / "phoneme_table.npy"),
                                  KeywordSpotter.load().phoneme_table)


def test_cli_score_takes_a_keyword_file_as_the_js_cli_does(mobile, tmp_path):
    """`heron kws score --keyword-file F` scores what `--keyword TEXT` scores, and works on a mobile bundle."""
    import soundfile as sf

    def heron(*a):
        return subprocess.run([sys.executable, "-m", "heron", *a], capture_output=True, text=True)

    wav = tmp_path / "a.wav"
    sf.write(wav, _speech(), 16000, subtype="PCM_16")
    kwf = tmp_path / "k.kw"
    assert heron("kws", "enroll", "hey heron", "--out", str(kwf), "--confusables", "0").returncode == 0
    by_text = json.loads(heron("kws", "score", "--keyword", "hey heron", str(wav)).stdout)
    by_file = json.loads(heron("kws", "score", "--keyword-file", str(kwf), str(wav)).stdout)
    on_mobile = json.loads(heron("kws", "score", "--keyword-file", str(kwf), "--model", str(mobile), str(wav)).stdout)
    assert by_file == by_text and abs(on_mobile["score"] - by_text["score"]) < 0.05
    p = heron("kws", "score", str(wav))
    assert p.returncode != 0 and "--keyword TEXT or as --keyword-file" in p.stderr
