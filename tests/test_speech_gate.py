"""The speech gate: its policy, the one skip rule (a closed chunk runs no encoder module and moves the
caches on as closed modules do), streaming equal to whole-clip encoding with closed chunks, bundles
that carry it (and refuse what would misuse it), and the trained gate's training pieces."""
import numpy as np
import pytest

from heron.runtime.bundle import BundleError, load_bundle
from heron.runtime.speech_gate import PAST_KEY, STATE_KEY, STEADY_KEY, GatePolicy
from heron.runtime.spotter import KeywordSpotter

from conftest import CAL, _copy, edit_manifest, needs_espeak

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")


def test_policy_opens_releases_and_hangs_over():
    pol = GatePolicy(threshold=0.6, release=0.3, hangover=2)
    st, seen = pol.init_state(), []
    for p in (0.1, 0.7, 0.4, 0.35, 0.2, 0.2, 0.2, 0.5, 0.65, 0.1, 0.1, 0.1):
        is_open, st = pol.step(p, st)
        seen.append(is_open)
    # opens at 0.7, stays while >= release, then 2 chunks of hangover, closes; 0.5 alone does not open
    assert seen == [False, True, True, True, True, True, False, False, True, True, True, False]
    for bad in ({"threshold": 0.3, "release": 0.5}, {"release": 0.0}, {"hangover": -1}, {"hangover": 1.5},
                {"threshold": 1.0}):
        with pytest.raises(ValueError):
            GatePolicy(**{"threshold": 0.5, "release": 0.3, "hangover": 2, **bad})


@pytest.fixture(scope="module")
def gated(tiny, clip, tmp_path_factory):
    """The tiny encoder with a random speech gate whose threshold is near the median of its probabilities
    on the test audio, so that some chunks close and some open (which ones, the runtime says: the tests
    read each chunk's decision from the stream state, not from this fp32 estimate)."""
    from heron.export.kws_bundle import write_bundle
    from heron.models.speech_gate import SpeechGate, _front

    model, _ = tiny
    torch.manual_seed(3)
    gate = SpeechGate(model.config.d_model).eval()
    audio = np.concatenate([clip, np.zeros(16000, np.float32), clip])
    with torch.no_grad():
        p = gate(_front(model, torch.from_numpy(audio[None]))[0]).numpy()
    thr = float(np.median(p))
    out = write_bundle(model, tmp_path_factory.mktemp("gated"), calibration=CAL,
                       speech_gate=(gate, GatePolicy(thr, thr, 0)))
    return out, audio


def test_closed_chunks_run_nothing_and_move_the_caches_as_closed_modules_do(gated):
    path, audio = gated
    sp = KeywordSpotter.load(path)
    assert sp.speech_policy is not None
    n = sp.chunk_samples
    calls = {"n": 0}
    for name, run in list(sp.modular._runners.items()):  # count encoder module runs (the front end always runs)
        sp.modular._runners[name] = _Counting(run, calls, skip=name == "frontend")
    L, st, lps, was_open, replays, decisions = sp.modular.n_layers, sp.init_state(), [], False, 0, []
    for i in range(0, len(audio) - n + 1, n):
        before = calls["n"]
        past = int(st[STEADY_KEY][0])  # closed chunks in a row (at most PAST_CHUNKS): replayed for context
        lp, emb, _, st = sp.run_chunk(audio[i:i + n], st)
        ran = calls["n"] - before
        is_open = bool(st[STATE_KEY][0])  # the gate's decision for this chunk
        decisions.append(is_open)
        if is_open and not was_open and past:  # opening: the kept closed chunks run first (layers only)
            assert 1 + 2 * L * (1 + past) <= ran <= 1 + 6 * L * (1 + past)
            replays += 1
        else:
            assert (1 + 2 * L <= ran <= 1 + 6 * L) if is_open else ran == 0
        was_open = is_open
        if not is_open:
            assert (lp.argmax(axis=1) == sp.blank).all() and (emb == 0).all()
        lps.append(lp)
    lp_whole, _, _ = sp.encode(audio[: len(lps) * n])
    assert np.array_equal(np.concatenate(lps), lp_whole) and replays > 0
    assert 0 < sum(decisions) < len(decisions)  # some chunks open, some closed
    # a closed chunk's caches equal those of the same chunk run with every module gate closed
    ref = KeywordSpotter.load(path, speech_gate=False)
    ref.modular.gate_threshold = 2.0  # no gate probability exceeds it: every module skipped
    st_a, st_b = sp.init_state(), ref.init_state()
    for i in range(0, len(audio) - n + 1, n):
        chunk = audio[i:i + n]
        _, _, _, st_a = sp.run_chunk(chunk, st_a)
        if st_a[STATE_KEY][0]:
            break
        _, _, _, st_b = ref.run_chunk(chunk, st_b)
        for k in st_b:  # (the gated state also keeps the last chunks' audio and the steady-skip state)
            assert np.array_equal(st_a[k], st_b[k]), k
        assert st_a[STATE_KEY][0] == 0


class _Counting:
    """Wraps one module's runner (feeds -> outputs) and counts its calls."""

    def __init__(self, run, calls, skip):
        self.run, self.calls, self.skip = run, calls, skip

    def __call__(self, feeds):
        if not self.skip:
            self.calls["n"] += 1
        return self.run(feeds)


def test_streaming_equals_whole_clip_with_closed_chunks(gated):
    path, audio = gated
    sp = KeywordSpotter.load(path)
    kw = sp.enroll("hey heron")
    lp, _, _ = sp.encode(audio)
    best = sp.match_encoded("hey heron", lp)
    kw.threshold = best[0] * 0.999
    whole = sp.score_file(audio, kw.name)
    assert whole == pytest.approx(best, abs=1e-6)
    refs = None
    for sizes in ([len(audio)], [4000], [1, 7777, 160]):
        st = sp.stream()
        st.record_scores = True
        dets, i, k = [], 0, 0
        while i < len(audio):
            m = sizes[k % len(sizes)]
            dets += st.accept(audio[i:i + m])
            i, k = i + m, k + 1
        dets += st.flush()
        got = (dets, np.concatenate(st.score_log["hey heron"]), st.chunks_without_speech)
        if refs is None:
            refs = got
            assert dets and got[2] > 0  # detections, and chunks the gate closed
        else:
            assert got[0] == refs[0] and np.array_equal(got[1], refs[1]) and got[2] == refs[2]


def test_bundles_with_a_speech_gate_are_checked(gated, tmp_path):
    path, _ = gated
    with pytest.raises(ValueError, match="speech gate skips the per-module graphs"):
        KeywordSpotter.load(path, skip_gates=False)
    assert KeywordSpotter.load(path, skip_gates=False, speech_gate=False).modular is None
    assert load_bundle(path).manifest.speech_gate.hangover == 0
    edits = {
        "release": lambda m: m["speech_gate"].update(release=m["speech_gate"]["threshold"] + 0.1),
        "no policy": lambda m: m.pop("speech_gate"),
        "no graph": lambda m: m["files"].pop("speech_gate"),
        "hangover": lambda m: m["speech_gate"].update(hangover=1000),
        "threshold": lambda m: m["speech_gate"].update(threshold=1.5),
    }
    for name, change in edits.items():
        bad = edit_manifest(_copy(path, tmp_path / name.replace(" ", "_")), change)
        with pytest.raises(BundleError, match="speech_gate"):
            load_bundle(bad)


def test_training_clips_and_labels():
    from heron.models.speech_gate import GateTrainConfig, background, make_clip, voiced_span

    rng = np.random.default_rng(0)
    speech = np.concatenate([np.zeros(8000), 0.3 * np.sin(np.arange(16000) * 0.3), np.zeros(8000)]).astype(np.float32)
    a, b = voiced_span(speech)
    assert abs(a - 8000) <= 160 and abs(b - 24000) <= 160
    for _ in range(20):
        x, y = make_clip([speech], 5120 * 20, 5120, rng, GateTrainConfig())
        assert x.shape == (5120 * 20,) and y.shape == (20,) and np.isfinite(x).all() and np.abs(x).max() <= 1
        assert y.sum() <= 2 * 6  # at most two utterances of 1 s voiced (+ partial chunks)
    for _ in range(10):
        bg = background(16000, rng)
        assert np.isfinite(bg).all() and abs(float(np.sqrt(np.mean(bg.astype(np.float64) ** 2))) - 1) < 1e-3



def test_the_gate_policy_is_one_schema_for_manifest_runtime_and_export():
    from heron.runtime.bundle import BundleError
    from heron.runtime.speech_gate import GatePolicy

    pol = GatePolicy(0.05, 0.03, 2)
    assert GatePolicy.from_dict(pol.to_dict(), "m") == pol
    for bad, why in (({"threshold": 0.05, "release": 0.06, "hangover": 2}, "at most"),
                     ({"threshold": 0.05, "release": 0.03, "hangover": 2.5}, "integer"),
                     ({"threshold": 0.05, "release": 0.03}, "missing"),
                     ({**pol.to_dict(), "attack": 1}, "does not know")):
        with pytest.raises(BundleError, match=why):
            GatePolicy.from_dict(bad, "m")


def test_history_moves_on_through_a_long_closed_stretch(clip):
    """After more closed chunks than the history window holds, the stream only moves the window on
    (nothing is copied): its embeddings, voiced frames and first frame are still those of the whole clip's
    encoding, before and after the gate opens again (word times and the verifier read this window)."""
    sp = KeywordSpotter.load()  # the shipped bundle: speech gate and phoneme table (word times)
    sp.enroll("hey heron")
    rng = np.random.default_rng(0)
    quiet = (0.002 * rng.standard_normal(16000 * 12)).astype(np.float32)
    st = sp.stream()
    for part in (quiet, np.concatenate([clip, quiet[:16000 * 2]])):
        for i in range(0, len(part), 1600):
            st.accept(part[i:i + 1600])
        heard = quiet if part is quiet else np.concatenate([quiet, part])
        lp, emb, _ = sp.encode(heard[:len(heard) - len(heard) % sp.chunk_samples])
        keep = len(st._emb)
        assert st._emb_first + keep == len(emb) and np.array_equal(st._emb, emb[-keep:])
        assert np.array_equal(st._voiced, lp[-keep:].argmax(axis=1) != sp.blank)
    assert st._quiet_frames < keep < st.chunks_without_speech * sp.bundle.manifest.frames_per_chunk
    assert st.chunks_without_speech < st.chunks  # the clip opened the gate


def test_steady_noise_skips_the_front_end_and_the_gate_and_speech_still_opens_it(gated, clip):
    """With steady_db, a closed stream on steady noise runs no graph at all (the gate scores one chunk in
    STEADY_MAX_CHUNKS + 1), a louder chunk is always scored, and the outputs equal those of the same gate
    scoring every chunk; when the gate opens, the closed chunks before it are replayed from their audio.
    The gate here is a stand-in that says "speech" on loud front-end outputs, so that both runs make the
    same decisions by construction."""
    from heron.runtime.speech_gate import STEADY_MAX_CHUNKS

    path, _ = gated
    rng = np.random.default_rng(0)
    noise = (0.003 * rng.standard_normal(16000 * 8)).astype(np.float32)
    audio = np.concatenate([noise, clip, noise])
    runs = {}
    for steady in (0.0, 3.0):
        sp = KeywordSpotter.load(path)
        m, n = sp.modular, sp.chunk_samples
        calls, ctx = {"n": 0}, np.zeros((1, sp.state_shapes["cached_audio"][1]), np.float32)
        at = int(np.argmax([np.abs(clip[i:i + n]).sum() for i in range(0, len(clip) - n + 1, n)])) * n
        loud, quiet = (float(np.abs(m._runners["frontend"]({"audio_chunk": a[None, :n], "cached_audio": ctx})[0]).mean())
                       for a in (clip[at:], noise))
        assert loud != quiet

        def gate(feeds, cut=(loud + quiet) / 2, up=loud > quiet):
            calls["n"] += 1
            v = float(np.abs(feeds["x"]).mean())
            return [np.array([[0.9 if (v > cut) == up else 0.01]], np.float32)]

        m._gate_run = gate
        m.policy = sp.speech_policy = GatePolicy(0.5, 0.3, 1, steady_db=steady)
        st, lps, opened = sp.init_state(), [], 0
        for i in range(0, len(audio) - n + 1, n):
            lp, _, _, st = sp.run_chunk(audio[i:i + n], st)
            lps.append(lp)
            opened += bool(st[STATE_KEY][0])
            assert np.array_equal(st[PAST_KEY][0, -n:], audio[i:i + n])  # the last chunk's audio is kept
        runs[steady] = (np.concatenate(lps), calls["n"], opened, len(lps))
    (lp0, calls0, open0, chunks), (lp3, calls3, open3, _) = runs[0.0], runs[3.0]
    assert calls0 == chunks and 0 < open0 < chunks  # without the skip, every chunk is scored
    assert np.array_equal(lp0, lp3) and open3 == open0  # the same outputs and decisions
    noise_chunks = 2 * (len(noise) // sp.chunk_samples)
    assert calls3 <= chunks - noise_chunks + 2 * (noise_chunks // (STEADY_MAX_CHUNKS + 1) + 2)
    assert GatePolicy.from_dict({"threshold": 0.5, "release": 0.3, "hangover": 1}, "m").steady_db == 0.0  # older bundles
    with pytest.raises(BundleError, match="steady_db"):
        GatePolicy.from_dict({"threshold": 0.5, "release": 0.3, "hangover": 1, "steady_db": 40}, "m")


@needs_espeak
def test_a_keyword_right_after_30_s_of_silence_or_noise_is_found_at_its_time():
    """The shipped bundle (speech gate with its steady skip): 30 s of digital silence, near-silence or brown
    noise keep the gate closed, and a keyword said right after them is detected with the times it has
    after half a second of silence (hangover, release and the replay work at the start of speech)."""
    from heron.models.data.tts import Voice, synthesize

    sp = KeywordSpotter.load()
    assert sp.speech_policy is not None and sp.speech_policy.steady_db > 0
    sp.enroll("hey computer")
    word = synthesize(Voice("espeak", "en-us"), "hey computer", use_cache=False)
    word = (0.5 * word / np.abs(word).max()).astype(np.float32)
    tail = np.zeros(16000, np.float32)

    def spot(audio):
        st = sp.stream()
        dets = st.accept(audio) + st.flush()
        return dets, st

    (ref,), _ = spot(np.concatenate([np.zeros(8000, np.float32), word, tail]))
    rng = np.random.default_rng(0)
    n = 16000 * 30
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")
    for name, lead in (("silence", np.zeros(n)), ("near-silence", 1e-4 * rng.standard_normal(n)),
                       ("brown noise", 0.02 * brown / np.abs(brown).max())):
        dets, st = spot(np.concatenate([lead.astype(np.float32), word, tail]))
        assert len(dets) == 1, name
        assert dets[0].start_s - 30 == pytest.approx(ref.start_s - 0.5, abs=0.09), name
        assert dets[0].end_s - 30 == pytest.approx(ref.end_s - 0.5, abs=0.09), name
        assert st.chunks_without_speech >= 0.9 * n / sp.chunk_samples, name
