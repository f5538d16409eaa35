"""Training on a user's own recordings: LibriPhrase-style CSV and LibriSpeech-layout folders."""
import numpy as np
import pytest
import soundfile as sf

from heron.models.kws_data import load_user_pool, text_targets


def _tone(seconds, sr):
    t = np.arange(int(seconds * sr)) / sr
    return (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_csv_pool(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0, 16000), 16000)
    sf.write(tmp_path / "b.wav", _tone(0.5, 8000), 8000)  # resampled to 16 kHz on load
    (tmp_path / "pairs.csv").write_text("audio,text\na.wav,hey heron\nb.wav,turn on the lights\n")
    pool = load_user_pool(tmp_path / "pairs.csv")
    assert [u.text for u in pool] == ["hey heron", "turn on the lights"]
    assert pool[0].targets == text_targets("hey heron")
    assert len(pool[1].audio) == 8000 and pool[1].audio.dtype == np.int16


def test_librispeech_layout(tmp_path):
    d = tmp_path / "19" / "198"
    d.mkdir(parents=True)
    sf.write(d / "19-198-0001.flac", _tone(0.8, 16000), 16000)
    sf.write(d / "19-198-0002.flac", _tone(0.6, 16000), 16000)
    (d / "19-198.trans.txt").write_text("19-198-0001 HELLO WORLD\n19-198-0002 GOOD MORNING\n")
    pool = load_user_pool(tmp_path)
    assert sorted(u.text for u in pool) == ["GOOD MORNING", "HELLO WORLD"]


def test_bad_user_data(tmp_path):
    (tmp_path / "x.csv").write_text("path,words\nfoo.wav,hi\n")
    with pytest.raises(ValueError, match="audio"):
        load_user_pool(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no utterances"):
        load_user_pool(tmp_path / "empty")
    with pytest.raises(ValueError, match="expected"):
        load_user_pool(tmp_path / "nothing.txt")
