"""Data engine: determinism, voice registry, hard-negative rule, augmentation bounds."""
import numpy as np
import pytest

from heron.models.data import augment
from heron.models.data.pairs import make_pairs
from heron.models.data.vocab import Phrase, nearest_by_phonemes
from heron.runtime.phonemes import levenshtein

from conftest import needs_espeak


@needs_espeak
def test_same_seed_same_audio_bytes(tmp_path, monkeypatch):
    from heron.models.data.tts import VoiceRegistry, synthesize

    reg = VoiceRegistry(engines=["espeak"])
    a = [synthesize(v, "hey heron", use_cache=False).tobytes() for v in reg.sample(3, seed=7)]
    b = [synthesize(v, "hey heron", use_cache=False).tobytes() for v in reg.sample(3, seed=7)]
    c = [v.id for v in reg.sample(3, seed=8)]
    assert a == b
    assert c != [v.id for v in reg.sample(3, seed=7)]


@needs_espeak
def test_cache_returns_identical_audio():
    from heron.models.data.tts import Voice, synthesize

    v = Voice("espeak", "en-us", 1.0, 50, 0)
    first = synthesize(v, "cache me")
    second = synthesize(v, "cache me")
    assert first.dtype == np.float32 and np.array_equal(first, second)
    assert np.max(np.abs(first)) <= 1.0


@needs_espeak
def test_registry_held_out_voices_are_disjoint():
    from heron.models.data.tts import VoiceRegistry

    reg = VoiceRegistry(engines=["espeak"], hold_out_fraction=0.2)
    train = {v.base_id for v in reg.voices("train")}
    held = {v.base_id for v in reg.voices("heldout")}
    assert train and held and not (train & held)
    assert {v.base_id for v in reg.sample(50, split="heldout", seed=1)} <= held
    assert len({v.base_id for v in reg.sample(20, seed=0)}) == 20  # distinct


def _toy_vocab():
    words = {"cat": "K AE T", "bat": "B AE T", "cab": "K AE B", "dog": "D AO G", "dig": "D IH G",
             "fish": "F IH SH", "cast": "K AE S T", "bait": "B EY T"}
    return [Phrase(w, tuple(p.split()), 1) for w, p in words.items()]


def test_hard_negative_is_smallest_nonzero_distance():
    vocab = _toy_vocab()
    pairs = make_pairs(vocab, n_anchors=40, seed=3)
    hard = [p for p in pairs if p.kind == "hard"]
    assert hard
    for p in hard:
        anchor = tuple(p.anchor_phonemes.split())
        dists = [levenshtein(anchor, v.phonemes) for v in vocab if v.phonemes != anchor]
        assert p.distance == min(d for d in dists if d > 0)
        assert p.label == 0 and p.audio_text != p.anchor
    assert {p.kind for p in pairs} == {"positive", "easy", "hard", "contains"}
    for p in pairs:
        if p.kind == "contains":
            assert p.anchor in p.audio_text and p.label == 1


def test_nearest_by_phonemes_skips_identical():
    i, d = nearest_by_phonemes(("K", "AE", "T"), [("K", "AE", "T"), ("B", "AE", "T"), ("D", "AO", "G")])
    assert (i, d) == (1, 1)
    with pytest.raises(ValueError):
        nearest_by_phonemes(("K",), [("K",)])


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 30.0])
def test_add_noise_hits_requested_snr(snr):
    rng = np.random.default_rng(0)
    speech = (0.1 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    noise = augment.colored_noise(16000, "pink", rng)
    mixed = augment.add_noise(speech, noise, snr)
    assert np.max(np.abs(mixed)) <= 1.0
    scale = 1.0
    peak = np.max(np.abs(speech + noise * (augment.rms(speech) / (augment.rms(noise) * 10 ** (snr / 20)))))
    if peak > 0.99:
        scale = 0.99 / peak  # the whole mix was scaled down, which keeps the SNR
    measured = 20 * np.log10(augment.rms(speech * scale) / augment.rms(mixed - speech * scale))
    assert abs(measured - snr) < 0.05


def test_augmenter_bounds_and_determinism():
    rng = np.random.default_rng(1)
    speech = (0.9 * np.sign(np.sin(np.arange(24000) * 0.02))).astype(np.float32)  # loud square wave
    aug = augment.Augmenter(augment.AugmentConfig(snr_range_db=(-5.0, 5.0), gain_range_db=(0.0, 20.0)))
    outs = [aug(speech, np.random.default_rng(s)) for s in range(12)]
    for o in outs:
        assert o.dtype == np.float32 and np.all(np.isfinite(o)) and np.max(np.abs(o)) <= 1.0
    again = [aug(speech, np.random.default_rng(s)) for s in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(outs, again))
    assert not np.array_equal(outs[0], outs[1])
    del rng


def test_noises_and_rir():
    rng = np.random.default_rng(2)
    for c in ("white", "pink", "brown"):
        n = augment.colored_noise(8000, c, rng)
        assert abs(augment.rms(n) - 1.0) < 1e-3
    # pink has more low-frequency power than white
    w, p = augment.colored_noise(16000, "white", rng), augment.colored_noise(16000, "pink", rng)
    low = lambda x: np.sum(np.abs(np.fft.rfft(x))[:200] ** 2) / np.sum(np.abs(np.fft.rfft(x)) ** 2)
    assert low(p) > 5 * low(w)
    h = augment.synthetic_rir(rng, rt60=0.4)
    assert h[0] > 0 and abs(np.sum(h**2) - 1.0) < 1e-4
    with pytest.raises(ValueError):
        augment.colored_noise(100, "purple", rng)


def test_band_limit_removes_high_frequencies():
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 6000 * t) + 0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    y = augment.band_limit(x, 8000)
    spec = np.abs(np.fft.rfft(y))
    assert spec[6000] < 0.01 * spec[500]


def _tones(freqs, seconds=1.0):
    t = np.arange(int(seconds * 16000)) / 16000
    return sum(0.2 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def test_device_augmentations_are_bounded_and_deterministic():
    speech = _tones([300, 1200, 2500], 1.5)
    aug = augment.Augmenter(augment.AUGMENT_PRESETS["device"])
    outs = [aug(speech, np.random.default_rng(s)) for s in range(16)]
    for o in outs:
        assert o.dtype == np.float32 and np.all(np.isfinite(o)) and np.max(np.abs(o)) <= 1.0
    assert all(np.array_equal(a, aug(speech, np.random.default_rng(s))) for s, a in enumerate(outs))
    # the standard preset draws no extra random numbers: its batches are what they were
    std = augment.Augmenter(augment.AUGMENT_PRESETS["standard"])
    assert np.array_equal(std(speech, np.random.default_rng(3)),
                          augment.Augmenter(augment.AugmentConfig())(speech, np.random.default_rng(3)))


def test_mic_response_cuts_the_far_ends_of_the_band():
    x = _tones([40, 1000, 7900])
    for s in range(5):
        spec = np.abs(np.fft.rfft(augment.mic_response(x, np.random.default_rng(s))))
        assert spec[40] < 0.7 * spec[1000] and spec[7900] < 0.7 * spec[1000]


def test_auto_gain_pumps_up_the_quiet_part():
    x = np.concatenate([_tones([500], 0.5), 0.02 * _tones([500], 1.0)])
    y = augment.auto_gain(x, np.random.default_rng(0))
    before = augment.rms(x[16000:]) / augment.rms(x[:8000])
    after = augment.rms(y[16000:]) / augment.rms(y[:8000])
    assert after > 3 * before


def test_clipping_and_speech_at_the_end():
    x = _tones([500])
    y = augment.clip_distort(x, np.random.default_rng(0))
    assert np.max(np.abs(y)) <= 0.9 + 1e-6 and np.mean(np.abs(y) > 0.8) > 0.3  # flattened peaks
    cfg = augment.AugmentConfig(p_speed=0, p_reverb=0, p_band_limit=0, p_noise=0, p_at_end=1.0)
    out = augment.Augmenter(cfg)(x, np.random.default_rng(0))
    assert len(out) >= len(x) + 0.5 * 16000 and np.abs(out[-100:]).max() > 1e-3  # lead-in, no tail


def test_the_cli_offers_every_augmentation_preset():
    from heron.cli_kws_build import AUGMENT_PRESET_NAMES

    assert sorted(AUGMENT_PRESET_NAMES) == sorted(augment.AUGMENT_PRESETS)
