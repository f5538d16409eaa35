"""Training on real recordings: sources (TSV manifests, CSV, LibriSpeech folders) checked up front with
row numbers, long utterances cropped together with their transcripts, resumed fine-tunes."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from heron.models.data.augment import AugmentConfig
from heron.models.data.real import (DataError, Utterance, crop_words, load_user_pool, read_rows,
                                    transcript_targets, word_cuts)
from heron.models.kws_data import BatchConfig, make_batch, text_targets


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
    assert pool[1].word_ends[-1] == len(pool[1].targets) and len(pool[1].word_ends) == 4
    assert len(pool[1].audio) == 8000 and pool[1].audio.dtype == np.int16


def test_librispeech_layout(tmp_path):
    d = tmp_path / "19" / "198"
    d.mkdir(parents=True)
    sf.write(d / "19-198-0001.flac", _tone(0.8, 16000), 16000)
    sf.write(d / "19-198-0002.flac", _tone(0.6, 16000), 16000)
    (d / "19-198.trans.txt").write_text("19-198-0001 HELLO WORLD\n19-198-0002 GOOD MORNING\n")
    pool = load_user_pool(tmp_path)
    assert sorted(u.text for u in pool) == ["GOOD MORNING", "HELLO WORLD"]


def test_several_sources_and_train_rows_only(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0, 16000), 16000)
    sf.write(tmp_path / "b.wav", _tone(1.0, 16000), 16000)
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\na.wav\tyes\ttrain\nb.wav\tno\ttest\n")
    (tmp_path / "p.csv").write_text("audio,text\nb.wav,hello\n")
    pool = load_user_pool([tmp_path / "m.tsv", tmp_path / "p.csv"])
    assert [u.text for u in pool] == ["yes", "hello"]  # the test row of the manifest never trains


def test_dataset_by_name(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    sf.write(tmp_path / "mine" / "a.wav", _tone(1.0, 16000), 16000)
    (tmp_path / "mine" / "manifest.tsv").write_text("file\ttranscript\tsplit\na.wav\tyes\ttrain\n")
    monkeypatch.setenv("HERON_DATA", str(tmp_path))
    assert [u.text for u in load_user_pool(["mine"])] == ["yes"]
    with pytest.raises(ValueError, match=r"theirs: no such file or folder \(nor a dataset name: mine under "):
        load_user_pool(["theirs"])
    monkeypatch.chdir(tmp_path / "mine")  # a file or folder of that name in the working folder comes first
    assert [u.text for u in load_user_pool(["manifest.tsv"])] == ["yes"]


def test_bad_user_data(tmp_path):
    (tmp_path / "x.csv").write_text("path,words\nfoo.wav,hi\n")
    with pytest.raises(ValueError, match="audio"):
        load_user_pool(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no train utterances"):
        load_user_pool(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such file"):
        load_user_pool(tmp_path / "nothing.txt")


@pytest.mark.parametrize("audio, why", [
    (np.zeros(0, np.float32), "0 samples"),
    (np.zeros(1, np.float32), "1 samples"),
    (np.full(16000, np.nan, np.float32), "NaN"),
])
def test_unusable_audio_is_refused_with_its_row(tmp_path, audio, why):
    sf.write(tmp_path / "ok.wav", _tone(1.0, 16000), 16000)
    sf.write(tmp_path / "bad.wav", audio, 16000, subtype="FLOAT")
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\nok.wav\tyes\ttrain\nbad.wav\tno\ttrain\n")
    with pytest.raises(DataError, match=f"m.tsv row 3: bad.wav .*{why}"):
        load_user_pool(tmp_path / "m.tsv")


def test_manifest_problems_name_the_row_before_audio_is_read(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(1.0, 16000), 16000)
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\nok.wav\tyes\ttrain\nmissing.wav\tno\ttrain\n")
    with pytest.raises(DataError, match=r"m.tsv row 3: no such audio file .*missing.wav"):
        read_rows(tmp_path / "m.tsv")
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\nok.wav\t   \ttrain\n")
    with pytest.raises(DataError, match="row 2: empty transcript"):
        read_rows(tmp_path / "m.tsv")


def test_long_transcripts_are_training_text_not_keywords():
    text = " ".join(["we call it bear and look at the pants"] * 30)  # 300+ characters
    assert len(text) > 200
    targets, ends = transcript_targets(text)
    assert len(ends) == 9 * 30 and ends[-1] == len(targets)
    assert targets == text_targets(text)


def _long_utterance(n_words=6, word_s=0.8):
    """A fake utterance of n_words equal words: targets 1..(3 per word), cut points known."""
    sr = 16000
    audio = np.zeros(int(n_words * word_s * sr), np.int16)
    targets = tuple(range(1, 3 * n_words + 1))
    ends = tuple(3 * (i + 1) for i in range(n_words))
    cuts = tuple(int(i * word_s * sr) for i in range(n_words + 1))
    return Utterance("w " * n_words, targets, audio, ends, cuts)


def test_crop_keeps_the_words_of_the_audio_it_keeps():
    u = _long_utterance()
    rng = np.random.default_rng(0)
    budget = int(2.0 * 16000)  # room for two whole 0.8 s words
    seen = set()
    word = int(0.8 * 16000)
    for _ in range(50):
        audio, targets = crop_words(u, budget, rng)
        offset = (audio.__array_interface__["data"][0] - u.audio.__array_interface__["data"][0]) // 2
        assert offset % word == 0 and len(audio) == 2 * word  # whole words only, as many as fit
        start = offset // word
        assert targets == u.targets[3 * start:3 * (start + 2)]
        seen.add(start)
    assert len(seen) > 2  # the crop moves over the utterance


def test_long_utterance_without_cut_points_is_used_whole():
    u = _long_utterance()
    u = Utterance(u.text, u.targets, u.audio, u.word_ends, ())
    audio, targets = crop_words(u, 16000, np.random.default_rng(0))
    assert len(audio) == len(u.audio) and targets == u.targets


class _NoAug:
    """Identity augmentation (the batch's crop is what is tested)."""

    config = AugmentConfig()
    noise = None
    babble_clips = None

    def __call__(self, x, rng, info=None):
        return x


def test_batches_never_keep_a_transcript_without_its_audio():
    long_ = _long_utterance(n_words=8)  # 6.4 s, longer than the 3.2 s crop
    whole = Utterance(long_.text, long_.targets, long_.audio, long_.word_ends, ())
    cfg = BatchConfig(batch_size=8, max_seconds=3.2, noise_only_fraction=0.0)
    wav, lens, targets, tlens = make_batch([long_], cfg, _NoAug(), np.random.default_rng(1))
    assert (lens <= 3.2 * 16000).all() and (tlens < len(long_.targets)).all()
    assert (tlens == lens // int(0.8 * 16000) * 3).all()  # three targets per whole word kept
    wav, lens, targets, tlens = make_batch([whole], cfg, _NoAug(), np.random.default_rng(1))
    assert (lens == len(whole.audio)).all() and (tlens == len(whole.targets)).all()  # whole, not cut


def test_word_cuts_fall_between_the_words_emissions():
    #        frame: 0   1  2   3   4   5  6   7   8  9
    align = np.array([-1, 0, 1, -1, -1, 2, -1, 3, 4, -1])  # words: targets (0, 1), (2,), (3, 4)
    cuts = word_cuts(align, (2, 3, 5), frame_samples=640, n_samples=6400)
    assert cuts == (0, int(4 * 640), int(6.5 * 640), 6400)
    with pytest.raises(ValueError):
        word_cuts(np.array([0, 1, 2]), (1, 2, 3), frame_samples=640, n_samples=100)


def test_alignment_cut_points_are_computed_once_and_cached(tmp_path):
    torch = pytest.importorskip("torch")
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.models.data.real import with_cuts
    from heron.models.train_kws import TRAIN_PRESETS, save_checkpoint

    torch.manual_seed(0)
    model = GatedConformer(PRESETS["tiny"])
    save_checkpoint(tmp_path / "ck", model, None, 0, TRAIN_PRESETS["smoke"])
    targets, ends = transcript_targets("we call it bear")
    u = Utterance("we call it bear", targets, (np.random.default_rng(0).standard_normal(4 * 16000) * 3000)
                  .astype(np.int16), ends)
    short = Utterance("yes", *transcript_targets("yes")[:1], np.zeros(8000, np.int16), transcript_targets("yes")[1])
    out = with_cuts([u, short], tmp_path / "ck", longer_than=16000, cache_dir=tmp_path / "cache")
    assert out[1].cuts == () and len(out[0].cuts) == 5
    assert out[0].cuts[0] == 0 and out[0].cuts[-1] == len(u.audio) and list(out[0].cuts) == sorted(out[0].cuts)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text()) == [list(out[0].cuts)]
    files[0].write_text(json.dumps([[0, 100, 200, 300, len(u.audio)]]))  # a second call reads the cache
    again = with_cuts([u, short], tmp_path / "ck", longer_than=16000, cache_dir=tmp_path / "cache")
    assert again[0].cuts == (0, 100, 200, 300, len(u.audio))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_resumed_fine_tune_continues_from_its_own_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.models.train_kws import TRAIN_PRESETS, read_checkpoint, save_checkpoint, train

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init", GatedConformer(PRESETS["tiny"]), None, 0, TRAIN_PRESETS["smoke"])
    cfg = replace(TRAIN_PRESETS["smoke"], steps=6, ckpt_every=3, pool_size=12, batch_size=2, lr=0.05, warmup=1,
                  init=str(tmp_path / "init"))
    train(cfg, tmp_path / "run", progress=False)
    at6 = read_checkpoint(tmp_path / "run")[0]
    train(replace(cfg, steps=7), tmp_path / "run", progress=False)
    at7 = read_checkpoint(tmp_path / "run")[0]
    init = read_checkpoint(tmp_path / "init")[0]

    def dist(a, b):
        return sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a if k.startswith("model.") and
                   a[k].is_floating_point())

    assert dist(at7, at6) < dist(at7, init)  # one more step from step 6, not one step from init


def test_bad_manifest_fails_before_any_speech_is_synthesized(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import heron.models.train_kws as tk

    def no_tts(*a, **k):
        raise AssertionError("the TTS pool was synthesized before the manifest was checked")

    monkeypatch.setattr(tk, "build_tts_pool", no_tts)
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\nmissing.wav\tyes\ttrain\n")
    cfg = replace(tk.TRAIN_PRESETS["smoke"], user_data=(str(tmp_path / "m.tsv"),), real_fraction=0.5)
    with pytest.raises(DataError, match="row 2: no such audio file"):
        tk.train(cfg, tmp_path / "run", progress=False)


def test_greedy_ctc_and_per(tmp_path):
    torch = pytest.importorskip("torch")
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.models.eval_per import greedy_ctc, phoneme_error_rate, run
    from heron.models.train_kws import TRAIN_PRESETS, save_checkpoint

    lp = np.log(np.eye(5)[[0, 3, 3, 0, 3, 2, 2, 0]] * 0.96 + 0.01)
    assert greedy_ctc(lp) == [3, 3, 2]  # repeats merge unless a blank separates them

    class Oracle(torch.nn.Module):  # emits exactly the reference: PER 0
        def __init__(self, targets):
            super().__init__()
            self.targets = targets

        def forward(self, wav):
            eye = torch.eye(40)[[c for t in self.targets for c in (t, 0)]]
            return torch.log(eye * 0.9 + 0.0025)[None], None, None

    u = Utterance("yes", *transcript_targets("yes")[:1], np.zeros(16000, np.int16), transcript_targets("yes")[1])
    assert phoneme_error_rate(Oracle(u.targets), [u])["per"] == 0.0
    assert phoneme_error_rate(Oracle(u.targets[:-1]), [u])["per"] == pytest.approx(100 / len(u.targets), abs=0.01)

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", GatedConformer(PRESETS["tiny"]), None, 0, TRAIN_PRESETS["smoke"])
    sf.write(tmp_path / "a.wav", _tone(1.0, 16000), 16000)
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\na.wav\tyes\ttrain\na.wav\tno\ttest\n")
    res = run(tmp_path / "ck", [str(tmp_path / "m.tsv")], tts=0, threads=1)
    assert res[str(tmp_path / "m.tsv")]["utterances"] == 1 and res[str(tmp_path / "m.tsv")]["per"] >= 0


def test_background_bank_from_real_recordings(tiny, tmp_path):
    from heron.models.calibrate_kws import build_background
    from heron.runtime.spotter import KeywordSpotter

    rows = []
    for i in range(5):
        x = _tone(0.7 + 0.1 * i, 16000) * (0.5 + 0.1 * i)
        sf.write(tmp_path / f"{i}.wav", x, 16000)
        rows.append(f"{i}.wav\tyes\ttrain")
    sf.write(tmp_path / "t.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "m.tsv").write_text("file\ttranscript\tsplit\n" + "\n".join(rows) + "\nt.wav\tno\ttest\n")
    spotter = KeywordSpotter.load(tiny[1])
    bank = build_background(spotter, n_segments=3, seconds=1.6, real=[str(tmp_path / "m.tsv")])
    again = build_background(spotter, n_segments=3, seconds=1.6, real=[str(tmp_path / "m.tsv")])
    assert bank.dtype == np.float16 and bank.shape[0] == 3 and np.array_equal(bank, again)
    lp, _, _ = spotter.encode(np.zeros(int(1.6 * 16000), np.float32))
    assert bank.shape[1:] == lp.shape and not np.allclose(bank[0].astype(np.float32), lp, atol=1e-2)
