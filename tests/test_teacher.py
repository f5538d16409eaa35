"""The real-speech teacher: packing into Whisper windows, frames at the student's rate, teacher targets
that follow the clip through crop, speed perturbation and padding, the cache, and training with it."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from heron.models.data.augment import AugmentConfig, Augmenter
from heron.models.data.real import Utterance, transcript_targets
from heron.models.kws_data import BatchConfig, make_batch
from heron.models import teacher as T

FRAME = 640


def test_teacher_frames_at_the_student_rate():
    frames = np.arange(10, dtype=np.float32)[:, None].repeat(3, 1)  # 10 Whisper frames = 3200 samples
    out = T.to_student_rate(frames, 3200, FRAME)
    assert out.shape == (5, 3) and np.allclose(out[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
    out = T.to_student_rate(frames[:9], 2900, FRAME)  # a partial last student frame
    assert out.shape == (5, 3) and out[-1, 0] == 8.0


def test_frame_targets_follow_crop_speed_and_lead():
    teacher = np.arange(100, dtype=np.float16)[:, None]  # teacher frame i holds i
    tg, mask = T.frame_targets(teacher, crop_start=0, crop_len=10 * FRAME, speed=1.0, lead=0, n_frames=12,
                               frame=FRAME)
    assert mask.tolist() == [True] * 10 + [False] * 2 and tg[:10, 0].tolist() == list(range(10))
    tg, mask = T.frame_targets(teacher, crop_start=20 * FRAME, crop_len=10 * FRAME, speed=1.0, lead=3 * FRAME,
                               n_frames=14, frame=FRAME)
    assert mask.tolist() == [False] * 3 + [True] * 10 + [False] and tg[3:13, 0].tolist() == list(range(20, 30))
    tg, mask = T.frame_targets(teacher, crop_start=0, crop_len=40 * FRAME, speed=2.0, lead=0, n_frames=20,
                               frame=FRAME)
    # twice as fast: output frame t holds input frames 2t and 2t+1; its centre is where 2t+1 starts
    assert mask.all() and tg[:, 0].tolist() == [2 * t + 1 for t in range(20)]


def _burst_utterance(n_frames=60, burst=(20, 30)):
    """Noise floor with a loud burst in frames [burst); the teacher frames say 1 where the burst is."""
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(n_frames * FRAME) * 30
    audio[burst[0] * FRAME:burst[1] * FRAME] = rng.standard_normal((burst[1] - burst[0]) * FRAME) * 8000
    teacher = np.zeros((n_frames, 2), np.float16)
    teacher[burst[0]:burst[1], 0] = 1
    targets, ends = transcript_targets("yes")
    return Utterance("yes", targets, audio.astype(np.int16), ends, teacher=teacher)


def test_batch_teacher_targets_line_up_with_the_augmented_audio():
    u = _burst_utterance()
    aug = Augmenter(AugmentConfig(p_speed=1.0, speed_range=(0.86, 1.14), p_reverb=0, p_band_limit=0, p_noise=0,
                                  gain_range_db=(0, 0), pad_range_s=(0.2, 0.6)))
    cfg = BatchConfig(batch_size=8, noise_only_fraction=0.0, max_seconds=3.2, teacher_frame=FRAME)
    for seed in range(3):
        wav, lens, _, _, teach, mask = make_batch([u], cfg, aug, np.random.default_rng(seed))
        assert teach.shape[:2] == mask.shape == (8, wav.shape[1] // FRAME)
        for b in range(8):
            energy = np.sqrt((wav[b, : mask.shape[1] * FRAME].reshape(-1, FRAME) ** 2).mean(1))
            loud = energy > 0.2 * energy.max()
            said = (teach[b, :, 0] > 0.5) & mask[b]
            # the frames the teacher marks as the burst are the frames where the burst is (+-1 at its edges)
            assert (loud & ~said).sum() <= 2 and (said & ~loud).sum() <= 2 and said.sum() >= 6
            assert 60 / 1.14 - 1 <= mask[b].sum() <= 60 / 0.86 + 1  # 60 frames played at 0.86-1.14x


def test_utterances_without_teacher_frames_are_masked_out():
    u = _burst_utterance()
    plain = replace(u, teacher=None)
    cfg = BatchConfig(batch_size=6, noise_only_fraction=0.3, max_seconds=3.2, teacher_frame=FRAME, real_fraction=0.5)
    wav, lens, _, tlens, teach, mask = make_batch([plain], cfg, Augmenter(), np.random.default_rng(1), real_pool=[u])
    with_teacher = mask.any(1)
    assert 0 < with_teacher.sum() < 6 and (tlens[with_teacher] > 0).all()
    assert not teach[~mask].any()
    assert len(make_batch([plain], replace(cfg, teacher_frame=0), Augmenter(), np.random.default_rng(1))) == 4


def test_teacher_cache_is_reused_and_checked(tmp_path, monkeypatch):
    pool = [_burst_utterance(), replace(_burst_utterance(40, (5, 9)), text="no")]
    calls = []

    class Fake:
        def __init__(self, threads=2):
            pass

        def frames(self, audios, frame, progress=True):
            calls.append(len(audios))
            return [np.full((-(-len(a) // frame), T.TEACHER_DIM), i + 1, np.float16) for i, a in enumerate(audios)]

    monkeypatch.setattr(T, "WhisperTeacher", Fake)
    out, mean, std = T.with_teacher(pool, FRAME, tmp_path, progress=False)
    assert calls == [2] and out[1].teacher.shape == (40, T.TEACHER_DIM) and float(out[1].teacher[0, 0]) == 2.0
    assert mean.shape == std.shape == (T.TEACHER_DIM,) and (std > 0).all()
    again, _, _ = T.with_teacher(pool, FRAME, tmp_path, progress=False)
    assert calls == [2] and np.array_equal(again[0].teacher, out[0].teacher)  # from the cache
    (folder,) = list(tmp_path.iterdir())
    index = json.loads((folder / "index.json").read_text())
    index["offsets"][-1] += 1
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not match its index"):
        T.with_teacher(pool, FRAME, tmp_path, progress=False)
    T.with_teacher(pool[:1], FRAME, tmp_path, progress=False)  # other audio: another cache entry
    assert calls == [2, 1]


def test_position_mean_falls_back_to_the_last_well_estimated_positions():
    total = np.zeros((6, 2))
    count = np.array([30, 30, 30, 5, 0, 0])
    total[:3] = np.array([[3, 0], [6, 0], [9, 0]]) * 30
    total[3] = [500, 500]
    mean = T.position_mean(total, count, min_count=20)
    assert mean[:3, 0].tolist() == [3, 6, 9] and np.allclose(mean[3:], [6, 0])


def _whisper():
    pytest.importorskip("faster_whisper")
    try:
        T.whisper_dir()
    except RuntimeError as e:
        pytest.skip(str(e))
    return T.WhisperTeacher(threads=1)


def test_whisper_frames_follow_the_audio_in_time():
    """Frames line up with the audio: the same sound 0.64 s later gives the same frames 16 student
    frames later, and the position mean over the set is removed."""
    teacher = _whisper()
    rng = np.random.default_rng(0)
    t = np.arange(int(1.2 * 16000)) / 16000
    clips = []
    for i in range(24):
        f0 = 150 + 10 * i
        x = np.sin(2 * np.pi * f0 * t * (1 + 0.5 * t)) * (np.sin(2 * np.pi * (2 + i % 3) * t) > 0)
        clips.append((0.3 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
    late = np.concatenate([np.zeros(2 * FRAME, np.float32) + 0.01 * rng.standard_normal(2 * FRAME).astype(np.float32),
                           np.zeros(14 * FRAME, np.float32), clips[0]])
    assert len(teacher.encode(clips[0])) == -(-len(clips[0]) // T.WHISPER_HOP)
    out = teacher.frames(clips + [late], FRAME, progress=False)
    assert out[0].shape == (-(-len(clips[0]) // FRAME), T.TEACHER_DIM) and out[0].dtype == np.float16
    a, b = out[0].astype(np.float32)[2:-2], out[-1].astype(np.float32)[16 + 2:-2]

    def cos(x, y):
        return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))).mean())

    # measured: 0.45 aligned, 0.32 without the shift, 0.20 for the next chirp
    assert cos(a, b) > cos(a, out[-1].astype(np.float32)[2:len(a) + 2]) + 0.08
    assert cos(a, b) > cos(a, out[1].astype(np.float32)[2:-2]) + 0.15
    stack = np.stack([o.astype(np.float32) for o in out[:24]])
    assert np.abs(stack.mean(0)).mean() < 0.2 * np.abs(stack).mean()  # the per-position mean is gone


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_training_with_the_teacher_resumes_and_releases_without_it(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import heron.models.train_kws as tk

    class Fake:
        def __init__(self, threads=2):
            pass

        def frames(self, audios, frame, progress=True):
            r = np.random.default_rng(len(audios))
            return [r.standard_normal((-(-len(a) // frame), T.TEACHER_DIM)).astype(np.float16) for a in audios]

    monkeypatch.setattr(T, "WhisperTeacher", Fake)
    rng = np.random.default_rng(0)
    rows = []
    for i, word in enumerate(["yes", "no", "stop", "go"]):
        sf.write(tmp_path / f"{i}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        rows.append(f"{i}.wav\t{word}\ttrain")
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\n" + "\n".join(rows) + "\n")
    cfg = replace(tk.TRAIN_PRESETS["smoke"], steps=4, ckpt_every=2, pool_size=8, batch_size=4,
                  user_data=(str(tmp_path / "m.tsv"),), real_fraction=0.5, teacher_weight=1.0, teacher_layer=2)
    tk.train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("teacher" in r for r in log) and any(r["teacher"] > 0 for r in log)
    tensors, meta = tk.read_checkpoint(tmp_path / "run")
    assert any(k.startswith("aux.") for k in tensors) and meta["step"] == 4
    tk.train(replace(cfg, steps=5), tmp_path / "run", progress=False)  # resumes with the projection
    assert tk.read_checkpoint(tmp_path / "run")[1]["step"] == 5
    tk.release(tmp_path / "run", tmp_path / "rel")
    assert not any(k.startswith("aux.") for k in tk.read_checkpoint(tmp_path / "rel")[0])
    tk.load_encoder(tmp_path / "rel")
    with pytest.raises(ValueError, match="teacher-layer 9"):
        tk.train(replace(cfg, teacher_layer=9), tmp_path / "run2", progress=False)
    with pytest.raises(ValueError, match="needs real speech"):
        tk.train(replace(cfg, user_data=(), real_fraction=0.0), tmp_path / "run3", progress=False)
