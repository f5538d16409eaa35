"""Silent wrong results and user mistakes (red-team findings): each gets the right answer or one line.

Streams: a keyword enrolled mid-stream reports stream times; re-enrolling a name keeps live streams
working; a detection reports its peak score. Options: every bad value is refused before any work.
Files: `heron listen` and `heron kws score` read audio by one rule.
"""
import argparse

import numpy as np
import pytest
import soundfile as sf

from heron.runtime.spotter import KeywordSpotter

from conftest import REPO

LM_NANO = REPO / "models" / "weights" / "lm-nano"


def _cli(args, capsys):
    """Run `heron ARGS` in this process -> (exit code, stderr)."""
    from heron.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own exit for usage mistakes
        code = e.code
    return code, capsys.readouterr().err.strip()


def _one_line_error(code, err, *needles):
    assert code not in (0, None), err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


# --- streams --------------------------------------------------------------------------------------

def _threshold_at_best(sp, kw, audio):
    best, start, end = sp.score_file(audio, kw.name)
    kw.threshold = best * 0.999  # a random model: put the threshold where the audio crosses it
    return start


def test_keyword_enrolled_mid_stream_reports_stream_times(tiny, clip):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    kw = sp.enroll("hey heron")
    _threshold_at_best(sp, kw, clip)
    t = kw.threshold
    sp.unenroll(kw.name)
    stream = sp.stream()
    lead = 5.0
    assert stream.accept(np.zeros(int(lead * 16000) - 100, np.float32)) == []
    kw = sp.enroll("hey heron")
    assert stream.accept(clip[:100]) == [] and "hey heron" not in stream.keywords  # a stream owns its snapshot
    kw.threshold = t * 0.9
    stream.add_keyword(kw)  # explicit, while the stream runs: its matcher starts at the stream's frame
    dets = stream.accept(clip[100:]) + stream.flush()
    assert dets, "the keyword's path in the clip crosses the threshold"
    for d in dets:  # the clip starts 5 s into the stream; times used to count from enrollment
        assert lead - 1e-6 <= d.start_s < d.end_s <= lead + len(clip) / 16000 + 0.5
        for w in d.words:
            assert lead - 1e-6 <= w.start_s <= w.end_s <= d.end_s + 1e-6


def test_reenrolling_a_name_with_other_text_keeps_live_streams_working(tiny, clip):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    old = sp.enroll("hey heron", name="wake")
    stream = sp.stream()
    stream.accept(clip[:16000])
    sp.unenroll("wake")
    kw = sp.enroll("okay computer start", name="wake")  # another phoneme count under the same name
    stream.accept(clip[16000:24000])  # used to raise a broadcast error and lose the audio
    assert stream.keywords["wake"] is old  # the stream still listens for what it was given
    stream.remove_keyword("wake")
    stream.add_keyword(kw)
    stream.accept(clip[24000:])
    stream.flush()
    assert stream._tracks["wake"].kw is kw
    stream.remove_keyword("wake")
    assert stream.accept(clip[:8000]) == [] and "wake" not in stream._tracks
    with pytest.raises(KeyError):
        stream.remove_keyword("wake")


def test_detection_reports_the_peak_not_the_threshold_crossing(tiny, clip):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    kw = sp.enroll("hey heron", sensitivity=1.0)
    kw.threshold = 1e-4  # very high sensitivity: the crossing comes long before the peak
    stream = sp.stream(refractory_s=0.0)
    stream.record_scores = True
    dets = stream.accept(clip) + stream.flush()
    conf = np.concatenate(stream.score_log[kw.name])
    fs = sp.frame_seconds
    assert dets
    d = dets[0]
    end = int(round(d.end_s / fs)) - 1  # the frame the detection reports
    cross = int(np.flatnonzero(conf >= kw.threshold)[0])
    assert d.score == pytest.approx(float(conf[end]))
    assert d.score == pytest.approx(float(conf[cross:end + 1].max()))  # the peak since the crossing
    assert d.score > conf[cross] or end == cross


def test_stream_options_are_checked(tiny):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    for kwargs, needle in (({"sample_rate": 0}, "sample_rate"), ({"sample_rate": -16000}, "sample_rate"),
                           ({"refractory_s": float("nan")}, "refractory_s"), ({"refractory_s": -1}, "refractory_s"),
                           ({"smoothing_frames": 0}, "smoothing_frames")):
        with pytest.raises(ValueError, match=needle):
            sp.stream(**kwargs)


def test_mixed_script_keyword_is_refused_not_truncated(tiny):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    with pytest.raises(ValueError, match="привет"):
        sp.enroll("hey привет")  # used to enroll "hey" alone
    assert sp.keywords == {}
    assert sp.enroll("café olé").pronunciation.words == ("cafe", "ole")  # accents are still fine


def test_score_file_streams_blocks_with_the_same_result(tiny, clip):
    _, path = tiny
    sp = KeywordSpotter.load(path)
    kw = sp.enroll("hey heron")
    whole = sp.score_file(clip, kw.name)
    blocks = sp.score_file((clip[i:i + 7000] for i in range(0, len(clip), 7000)), kw.name)
    assert whole == pytest.approx(blocks)


# --- files: one rule for listen and kws score ----------------------------------------------------

def test_listen_and_score_read_files_by_one_rule(tiny, clip, tmp_path, capsys):
    _, path = tiny
    hot = clip.copy()
    hot[100] = 1.01  # an mp3/ogg decoder's overshoot: `listen` aborted on it, `kws score` clipped it
    sf.write(tmp_path / "hot.wav", hot, 16000, subtype="FLOAT")
    sf.write(tmp_path / "hot8k.wav", hot[::2], 8000, subtype="FLOAT")  # another rate: both resample
    sf.write(tmp_path / "stereo.wav", np.stack([clip, clip], 1), 16000)
    for f in ("hot.wav", "hot8k.wav"):
        code, err = _cli(["kws", "score", "--model", path, "--keyword", "hey heron", tmp_path / f], capsys)
        assert code == 0, err
        code, err = _cli(["listen", "--model", path, "--keyword", "hey heron", "--file", tmp_path / f, "--no-meter"],
                         capsys)
        assert code == 0, err
    code, err = _cli(["listen", "--model", path, "--keyword", "hey heron", "--file", tmp_path / "stereo.wav",
                      "--no-meter"], capsys)
    assert code == 0 and "2 channels, mixed down to mono" in err  # phone and laptop recordings are stereo
    code, err = _cli(["listen", "--model", path, "--keyword", "hey heron", "--file", tmp_path / "nope.wav"], capsys)
    _one_line_error(code, err, "no such file")  # libsndfile used to say only "System error."
    code, err = _cli(["kws", "score", "--model", path, "--keyword", "hey heron", tmp_path / "nope.wav"], capsys)
    assert code == 1 and "no such file" in err


# --- options refused before any work --------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["lm", "generate", "x", "--temperature", "nan"], "--temperature"),
    (["lm", "generate", "x", "--top-p", "0"], "--top-p"),
    (["lm", "generate", "x", "--roe-tau", "-1"], "--roe-tau"),
    (["lm", "generate", "x", "--roe-tau", "nan"], "--roe-tau"),
    (["lm", "generate", "x", "--gamma", "-3"], "--gamma"),
    (["data", "synth", "--text", "hi", "--voices", "0", "--out", "OUT"], "--voices"),
    (["data", "pairs", "--anchors", "-5", "--out", "OUT/p.csv"], "--anchors"),
    (["data", "stream", "--keyword", "", "--minutes", "0.1", "--out", "OUT"], "pronounceable"),
    (["lm", "export", LM_NANO, "--target", "bogus", "--out", "OUT"], "bogus"),
    (["kws", "export", "--target", "bogus", "--out", "OUT"], "bogus"),
    (["kws", "export", "--threshold", "0.999", "--out", "OUT"], "never fires"),  # was 230 s, then refused at load
    (["kws", "eval", "--sets", "bogus"], "--sets"),
    (["enroll", "hey heron", "--confusables", "-3"], "--confusables"),
    (["listen", "--keyword", "x", "--file", "f.wav", "--sensitivity", "2"], "--sensitivity"),
    (["lm", "generate", "x", "--roe-samples", "1000000000"], "--roe-samples"),
    (["lm", "generate", "x", "--threads", "100000"], "--threads"),
    (["kws", "add-head", "B", "--head", "H", "--offset", "3", "--out", "OUT"], "--offset"),
    (["kws", "add-head", "B", "--head", "H", "--min-confidence", "2", "--out", "OUT"], "--min-confidence"),
    (["kws", "train-head", "--user-data", "an4", "--augment-copies", "11", "--out", "OUT"], "--augment-copies"),
    (["kws", "train-head", "--user-data", "an4", "--augment", "loud", "--out", "OUT"], "--augment"),
    (["kws", "train-head", "--user-data", "an4", "--tts", "-1", "--out", "OUT"], "--tts"),
    (["kws", "train-head", "--user-data", "an4", "--confusable-weight", "-1", "--out", "OUT"], "--confusable-weight"),
    (["kws", "train-head", "--user-data", "an4", "--lr", "0", "--out", "OUT"], "--lr"),
    (["kws", "train-head", "--user-data", "an4", "--confusables", "0", "--out", "OUT"], "--confusables"),
    (["kws", "train-head", "--user-data", "an4", "--init", "no/such/head", "--out", "OUT"], "--init"),
    (["kws", "train-head", "--user-data", "an4", "--hidden", "8", "--out", "OUT"], "--hidden"),
    (["kws", "train-head", "--user-data", "an4", "--layers", "0", "--out", "OUT"], "--layers"),
    (["kws", "per", "--checkpoint", "C", "--head", "H", "--json", "OUT"], "not allowed with"),
    (["kws", "per", "--tts", "0", "--json", "OUT"], "one of the arguments --checkpoint --head is required"),
    (["kws", "per", "--head", "H", "--tts", "-1", "--json", "OUT"], "--tts"),
], ids=lambda v: " ".join(map(str, v)) if isinstance(v, list) else v)
def test_bad_options_are_one_line_errors(args, needle, tmp_path, capsys):
    args = [str(a).replace("OUT", str(tmp_path / "out")) for a in args]
    code, err = _cli(args, capsys)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists(), "nothing is written for a refused command"


@pytest.mark.parametrize("args,needle", [
    (["listen", "--keyword", "x", "--file", "f.wav", "--sensitivty", "0.5"], "did you mean --sensitivity?"),
    (["kws", "enrol", "hey heron"], "did you mean enroll?"),
    (["lm", "generate", "x", "--temprature", "0.5"], "did you mean --temperature?"),
])
def test_typos_get_a_suggestion(args, needle, capsys):
    code, err = _cli(args, capsys)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("verb", [["lm", "train-exit"], ["lm", "train-mtp"], ["lm", "train"], ["kws", "train"],
                                  ["kws", "train-gate", "--encoder", "x", "--user-data", "an4"]])
def test_out_that_is_a_file_is_refused_before_training(verb, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    code, err = _cli([*verb, "--out", f], capsys)
    _one_line_error(code, err, "is a file; this command writes a folder")
    assert f.read_text() == "keep me"


def test_an_unknown_microphone_lists_the_input_devices():
    from heron.listen import resolve_device

    devices = [{"index": 0, "name": "Built-in Microphone"}, {"index": 3, "name": "USB Headset Mic"}]
    assert resolve_device(None, devices) is None
    assert resolve_device("3", devices) == 3 and resolve_device("usb", devices) == 3
    with pytest.raises(ValueError, match=r"--device 'webcam' is not an input device here; input devices: "
                                         r"0 'Built-in Microphone', 3 'USB Headset Mic'"):
        resolve_device("webcam", devices)
    with pytest.raises(ValueError, match="matches several"):
        resolve_device("mic", devices)


def test_speculative_none_is_plain_decoding():
    pytest.importorskip("torch")
    import heron

    lm = heron.load_lm()
    opts = heron.GenerationOptions(max_new_tokens=6)
    plain = [t.id for t in lm.generate("Return the", opts)]
    assert [t.id for t in lm.generate("Return the", opts, heron.SpeculativeOptions("none"))] == plain


def test_target_device_is_honoured_by_plain_decoding(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: --target-device cuda is valid here")
    code, err = _cli(["lm", "generate", "Return the", "--target-device", "cuda", "--max-new-tokens", "2"], capsys)
    _one_line_error(code, err, "CUDA")  # plain decoding used to ignore it and run on the CPU


def test_generation_says_when_the_context_is_full(capsys):
    pytest.importorskip("torch")
    from heron.models.lm.checkpoint import load

    _, tok, _ = load(LM_NANO)
    words = "Return the number of items in the list. " * 200
    ids = tok.encode(words)[:505]
    prompt = tok.decode(ids)
    n = len(tok.encode(prompt))
    code, err = _cli(["lm", "generate", prompt, "--max-new-tokens", "64"], capsys)
    assert code == 0, err
    assert n < 512 and "context of 512 tokens is full" in err


@pytest.mark.parametrize("model", [None, "ONNX"])
def test_non_utf8_prompt_is_one_line(model, capsys):
    from heron.runtime.lm import DEFAULT_DRAFT

    args = ["lm", "generate", "hi \udcff"]  # what argv holds for bytes that are not UTF-8
    if model:
        args += ["--model", DEFAULT_DRAFT]
    code, err = _cli(args, capsys)
    _one_line_error(code, err, "UTF-8")


def test_export_out_must_be_a_new_or_bundle_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("precious")
    code, err = _cli(["kws", "export", "--out", f], capsys)
    _one_line_error(code, err, "is a file")
    d = tmp_path / "stuff"
    d.mkdir()
    (d / "notes.txt").write_text("precious")
    for verb in (["kws", "export"], ["lm", "export", LM_NANO]):
        code, err = _cli([*verb, "--out", d], capsys)
        _one_line_error(code, err, "holds other things")
    assert f.read_text() == "precious" and (d / "notes.txt").read_text() == "precious"


def test_every_option_shows_its_default():
    from heron.cli import build_parser

    def walk(parser, prog):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    yield from walk(sub, f"{prog} {name}")
            elif a.option_strings and a.nargs != 0 and not a.required and a.dest != "help":
                yield prog, a

    missing = [f"{prog} {a.option_strings[-1]}" for prog, a in walk(build_parser(), "heron")
               if a.default is None and "default" not in (a.help or "")]
    assert missing == [], f"options whose --help says nothing of their default: {missing}"


def test_a_misspelt_keyword_is_enrolled_with_a_warning_that_names_the_guess(tiny, clip, tmp_path, capsys):
    """A word not in the dictionary (a typo) is pronounced by G2P: every command that enrolls says which
    word and how it was pronounced; dictionary words get no such note."""
    from heron.cli import main
    from heron.runtime.phonemes import describe_guesses, pronounce

    assert pronounce("hey lightouse").guessed == ("lightouse",) and pronounce("hey heron").guessed == ()
    assert describe_guesses(pronounce("hey heron")) is None
    assert main(["kws", "enroll", "hey lightouse", "--confusables", "0"]) == 0
    assert "not in the dictionary, pronounced by G2P: 'lightouse' as" in capsys.readouterr().out
    _, path = tiny
    sf.write(tmp_path / "a.wav", clip, 16000)
    for text, noted in (("hey lightouse", True), ("hey heron", False)):
        code, err = _cli(["kws", "score", "--model", path, "--keyword", text, tmp_path / "a.wav"], capsys)
        assert code == 0 and ("'lightouse' as" in err) == noted, err
        code, err = _cli(["listen", "--model", path, "--keyword", text, "--file", tmp_path / "a.wav", "--no-meter"],
                         capsys)
        assert code == 0 and ("'lightouse' as" in err) == noted, err


def test_bench_long_stream_missing_file_is_refused_first(capsys):
    code, err = _cli(["kws", "bench", "--long-stream", "/nonexistent/stream.wav"], capsys)
    _one_line_error(code, err, "no such file: /nonexistent/stream.wav")
    assert "System error" not in err


def test_the_stream_evaluation_writes_into_the_cache_not_the_current_folder(monkeypatch, tmp_path):
    """`kws eval --sets stream` generates its stream audio once: into heron's cache folder (HERON_CACHE),
    never into runs/ under the current folder."""
    import os

    import heron.models.data.streams as streams
    from heron.models.eval_kws import eval_stream

    seen = {}

    def fake_build(cfg, wav, lab, *a, **k):
        seen["wav"] = wav
        raise RuntimeError("stop here")
    monkeypatch.setattr(streams, "build_stream", fake_build)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        eval_stream(None, minutes=0.1)
    assert str(seen["wav"]).startswith(os.environ["HERON_CACHE"]) and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [
    ["kws", "release", "CKPT", "--out", "PKG/models/weights/kws-base"],
    ["kws", "export", "--out", "PKG/runtime/assets/kws"],
    ["kws", "export", "--out", "PKG/runtime/assets/lm-draft/x"],
    ["lm", "export", "CKPT", "--out", "PKG/runtime/assets/kws"],
    ["lm", "train-exit", "--out", "PKG/models/weights/lm-nano"],
    ["lm", "train-mtp", "--out", "PKG/models/weights/lm-nano/mtp"],
    ["kws", "train", "--out", "PKG/models/weights/kws-base"],
])
def test_no_verb_writes_into_the_shipped_models(args, tmp_path, capsys, monkeypatch):
    """--out inside the package's shipped models is refused before any work (the build scripts set
    HERON_WRITE_PACKAGE=1); the shipped files are untouched."""
    from heron.paths import package_folders

    monkeypatch.delenv("HERON_WRITE_PACKAGE", raising=False)
    root = package_folders()[0].parents[1]  # the folder holding models/ and runtime/
    before = {p: p.stat().st_mtime_ns for f in package_folders() for p in f.rglob("*") if p.is_file()}
    args = [a.replace("PKG", str(root)).replace("CKPT", str(tmp_path)) for a in args]
    code, err = _cli(args, capsys)
    _one_line_error(code, err, "inside heron's shipped models")
    assert before == {p: p.stat().st_mtime_ns for f in package_folders() for p in f.rglob("*") if p.is_file()}


def test_out_may_not_be_the_model_the_command_reads(tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    code, err = _cli(["kws", "release", ck, "--out", ck], capsys)
    _one_line_error(code, err, "is the model this command reads (--checkpoint)")
    code, err = _cli(["kws", "train", "--init", ck, "--out", ck], capsys)
    _one_line_error(code, err, "is the model this command reads (--init)")


def test_an_export_never_replaces_another_kind_of_bundle(tmp_path, capsys):
    import json

    kws, lm = tmp_path / "kws", tmp_path / "lm"
    for folder, fmt in ((kws, "heron-kws-bundle/1"), (lm, "heron-lm-onnx/1")):
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"format": fmt}))
    code, err = _cli(["lm", "export", str(tmp_path / "nothing"), "--out", kws], capsys)
    _one_line_error(code, err, "holds another kind of bundle (heron-kws-bundle/1)")
    code, err = _cli(["kws", "export", "--out", lm], capsys)
    _one_line_error(code, err, "holds another kind of bundle (heron-lm-onnx/1)")
    assert json.loads((kws / "manifest.json").read_text())["format"] == "heron-kws-bundle/1"


def test_a_head_fine_tune_keeps_its_shape_or_is_refused_before_any_work(tmp_path, capsys):
    """`train-head --init DIR` takes DIR's width and depth; asking for another shape is one line, before features."""
    from heron.models.embedding_head import EmbeddingHead, HeadConfig, save_head

    save_head(EmbeddingHead(HeadConfig(hidden=16, layers=1, dropout=0.0)), tmp_path, epochs_done=1)
    for opt in (["--layers", "2"], ["--hidden", "32"]):
        code, err = _cli(["kws", "train-head", "--user-data", "an4", "--init", tmp_path, *opt,
                          "--out", tmp_path / "out"], capsys)
        _one_line_error(code, err, "--hidden 16 --layers 1", "keeps its shape")
        assert not (tmp_path / "out").exists()
