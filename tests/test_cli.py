"""The `heron` command end to end (subprocess, as a user runs it)."""
import json
import subprocess
import sys

import pytest
import soundfile as sf

from conftest import needs_espeak


def heron(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "heron", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"heron {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_version_and_help():
    from heron import __version__

    assert __version__ in heron("--version").stdout
    out = heron("data", "synth", "--help").stdout
    assert "--voices" in out and "default: 10" in out


def test_doctor_lists_engines_and_extras():
    out = heron("doctor").stdout
    for word in ("espeak", "flite", "festival", "pico", "mbrola", "onnxruntime", "providers", "torch"):
        assert word in out


def test_doctor_warns_of_openmp_threads_that_sleep(monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE makes the native decoder's threads sleep at every barrier (several times slower):
    heron doctor says so where the decoder is built, and says nothing of it otherwise."""
    from heron import doctor
    from heron.runtime import native

    if not native.available():
        pytest.skip("the native decoder is not built here (make setup builds it)")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not [r for r in doctor.report() if r[:2] == ("native", "threads")]
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert [r for r in doctor.report() if r[:2] == ("native", "threads")][0][2].startswith("slow: OMP_WAIT_POLICY")


@needs_espeak
def test_data_synth_writes_distinct_voices(tmp_path):
    heron("data", "synth", "--text", "hey heron", "--voices", "6", "--out", str(tmp_path))
    meta = json.loads((tmp_path / "voices.json").read_text())
    assert len(meta["files"]) == 6 and len({f["voice"].rsplit("/", 3)[0] for f in meta["files"]}) == 6
    for f in meta["files"]:
        audio, sr = sf.read(tmp_path / f["file"])
        assert sr == 16000 and audio.ndim == 1 and len(audio) > 4000


@needs_espeak
def test_data_pairs_and_stream(tmp_path):
    heron("data", "pairs", "--anchors", "5", "--engines", "espeak", "--out", str(tmp_path / "p.csv"))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 20 and any(",hard," in r for r in rows) and any(",easy," in r for r in rows)
    heron("data", "stream", "--minutes", "0.5", "--rate", "6", "--engines", "espeak", "--out", str(tmp_path / "s"))
    audio, sr = sf.read(tmp_path / "s" / "stream.wav")
    assert sr == 16000 and abs(len(audio) / sr - 30.0) < 0.01
    labels = (tmp_path / "s" / "labels.csv").read_text().splitlines()
    assert labels[0].startswith("keyword,start_s,end_s")
    for row in labels[1:]:
        kw, a, b, _ = row.split(",", 3)
        assert kw == "hey heron" and 0 <= float(a) < float(b) <= 30.0


def test_bad_text_is_a_clear_error(tmp_path):
    p = heron("data", "synth", "--text", "!!!", "--out", str(tmp_path), check=False)
    assert p.returncode == 1 and "nothing pronounceable" in p.stderr
    assert "Traceback" not in p.stderr


def test_every_option_says_its_default():
    """`--help` of every verb: each optional, valued option has a help text that shows its default (the
    formatter's "(default: X)", or the text says what an unset option means)."""
    import argparse

    from heron.cli import _Formatter, build_parser

    silent = []

    def walk(parser, path):
        fmt = _Formatter(prog=path)
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, f"{path} {name}")
            elif a.option_strings and not a.required and a.nargs != 0:
                text = fmt._get_help_string(a) if (a.help or "").strip() else ""
                if "default" not in (text or ""):
                    silent.append(f"{path} {a.option_strings[-1]}")
    walk(build_parser(), "heron")
    assert not silent, silent
    assert "(default: default)" in " ".join(heron("kws", "train", "--help").stdout.split())
