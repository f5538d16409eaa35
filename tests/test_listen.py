"""Live listening end to end: a wav streamed from file, and the microphone path through a PulseAudio
null sink used as a virtual microphone (skips where pulseaudio is not installed)."""
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from heron.runtime.bundle import DEFAULT_BUNDLE

from conftest import needs_espeak

needs_model = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no shipped bundle")


@pytest.fixture(scope="module")
def keyword_wav(tmp_path_factory):
    """'hey heron' by a held-out TTS voice between stretches of silence and other speech:
    (path, (keyword start s, keyword end s))."""
    from heron.models.data.tts import VoiceRegistry, synthesize

    v1, v2 = VoiceRegistry().sample(2, split="heldout", seed=11)
    gap = np.zeros(8000, np.float32)
    before, kw = synthesize(v1, "the weather is nice today"), synthesize(v2, "hey heron")
    audio = np.concatenate([gap, before, gap, kw, gap, gap])
    path = tmp_path_factory.mktemp("listen") / "kw.wav"
    sf.write(path, audio, 16000, subtype="PCM_16")
    start = (2 * len(gap) + len(before)) / 16000
    return path, (start, start + len(kw) / 16000)


@needs_espeak
@needs_model
def test_listen_file_detects_keyword(keyword_wav):
    path, (a, b) = keyword_wav
    p = subprocess.run([sys.executable, "-m", "heron", "listen", "--keyword", "hey heron", "--file", str(path),
                        "--no-meter"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    header, *lines = p.stdout.splitlines()
    assert header.split("\t") == ["keyword", "start_s", "end_s", "score"]
    rows = [line.split("\t") for line in lines]
    # one spoken keyword -> exactly one event, inside the keyword's span (padding included)
    assert [r[0] for r in rows] == ["hey heron"], p.stdout + p.stderr
    assert a - 0.1 <= float(rows[0][1]) < float(rows[0][2]) <= b + 0.4


@needs_espeak
@needs_model
@pytest.mark.skipif(shutil.which("pulseaudio") is None or shutil.which("paplay") is None,
                    reason="pulseaudio not installed (apt-get install pulseaudio pulseaudio-utils)")
def test_microphone_through_virtual_sink(keyword_wav):
    pytest.importorskip("sounddevice")
    subprocess.run(["pulseaudio", "--kill"], capture_output=True)
    start = subprocess.run(["pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1",
                            "-L", "module-null-sink sink_name=heron_test rate=16000 channels=1",
                            "-L", "module-native-protocol-unix"], capture_output=True, text=True)
    if start.returncode != 0:
        pytest.skip(f"pulseaudio did not start: {start.stderr.strip()[-200:]}")
    try:
        subprocess.run(["pactl", "set-default-source", "heron_test.monitor"], check=True, capture_output=True)
        listener = subprocess.Popen([sys.executable, "-m", "heron", "listen", "--keyword", "hey heron", "--mic",
                                     "--seconds", "6", "--no-meter"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        # play only once the listener has loaded the model and opened the microphone
        seen = []
        while not any("listening for" in line for line in seen) and len(seen) < 50:
            line = listener.stderr.readline()  # "listening for 'hey heron' ..." comes before capture starts
            if not line:
                break
            seen.append(line)
        assert any("listening for" in line for line in seen), "".join(seen)
        time.sleep(1.0)  # opening the input stream takes about 0.4 s
        subprocess.run(["paplay", "-d", "heron_test", str(keyword_wav[0])], check=True, timeout=30)
        out, err = listener.communicate(timeout=60)
        assert listener.returncode == 0, err
        assert "hey heron" in out, out + err
    finally:
        subprocess.run(["pulseaudio", "--kill"], capture_output=True)


def test_mic_without_device_is_a_clear_error(monkeypatch):
    sd = pytest.importorskip("sounddevice")
    from heron import listen

    monkeypatch.setattr(sd, "query_devices", lambda: [])
    with pytest.raises(RuntimeError, match="no audio input device"):
        listen.listen_mic(object(), seconds=0.1)  # type: ignore[arg-type]


def test_level_meter_bounds():
    from heron.listen import level_meter

    assert "-60.0" in level_meter(np.zeros(100, np.float32))
    assert "0.0 dBFS" in level_meter(np.ones(100, np.float32))


@needs_espeak
@needs_model
def test_word_times_split_at_the_pause():
    import heron
    from heron.models.data.tts import VoiceRegistry, synthesize

    v = VoiceRegistry().sample(1, split="heldout", seed=5)[0]
    lead, gap = np.zeros(16000, np.float32), np.zeros(6400, np.float32)
    w1, w2 = synthesize(v, "hey"), synthesize(v, "heron")
    audio = np.concatenate([lead, w1, gap, w2, lead])
    pause = ((len(lead) + len(w1)) / 16000, (len(lead) + len(w1) + len(gap)) / 16000)
    sp = heron.KeywordSpotter.load()
    sp.enroll("hey heron")
    dets = sp.stream().accept(audio)
    assert len(dets) == 1 and [w.word for w in dets[0].words] == ["hey", "heron"]
    hey, heron = dets[0].words
    # "hey" ends before the pause is over and "heron" starts after it began (w1 carries the engine's
    # trailing silence, so the real pause starts before pause[0]); CTC spikes make times +-1-2 frames
    assert hey.start_s < hey.end_s <= pause[1] and pause[0] <= heron.start_s < heron.end_s, (dets, pause)
    assert heron.start_s - hey.end_s >= 0.3  # the 0.4 s pause lies between the words
