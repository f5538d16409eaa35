"""Always-on keyword spotting on numpy + onnxruntime.

    spotter = KeywordSpotter.load()              # the shipped bundle
    spotter.enroll("hey heron")                  # G2P + matcher: milliseconds, no recordings
    stream = spotter.stream()                    # listens for the keywords enrolled now
    for det in stream.accept(pcm):               # any chunk size, int16 or float32, 16 kHz mono
        print(det.keyword, det.score, det.start_s, det.end_s)

One loaded spotter serves many independent streams; each stream owns its encoder state, a snapshot
of the keywords it listens for (as sherpa-onnx's `create_stream(keywords)`), their matcher state and
its skip counters. Adding a keyword to a running stream is an explicit `stream.add_keyword(kw)`.
Audio is buffered internally, so detections do not depend on how the caller slices the audio.
Everything the runtime needs to know about the model (class table, gate threshold, matcher options,
rates) comes from the bundle's manifest.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heron.runtime.bundle import Bundle, BundleError, load_bundle
from heron.runtime.manifest import GATE_THRESHOLD
from heron.runtime.keyword_file import KeywordFile, KeywordFileError, check_for_bundle, read_keyword_file
from heron.runtime.ctc_kws import SCORE_FLOOR, CTCKeywordMatcher, CTCMatcherBank, CTCMatchState
from heron.runtime.phonemes import MAX_KEYWORD_PHONEMES, Pronunciation, pronounce
from heron.runtime.sessions import open_session, runner
from heron.runtime.speech_gate import PAST_CHUNKS
from heron.runtime.speech_gate import PAST_KEY as SPEECH_PAST
from heron.runtime.speech_gate import STATE_KEY as SPEECH_STATE
from heron.runtime.speech_gate import STEADY_KEY as SPEECH_STEADY

# keywords probed at load on silence and noise ("hey heron", "alexa", "okay google", "snowboy")
PROBE_KEYWORDS = (("HH", "EY", "HH", "EH", "R", "AH", "N"), ("AH", "L", "EH", "K", "S", "AH"),
                  ("OW", "K", "EY", "G", "UW", "G", "AH", "L"), ("S", "N", "OW", "B", "OY"))
MIN_BANK_SEGMENTS, MAX_BANK_SEGMENTS = 16, 100_000  # Z-norm statistics from fewer segments mean little
MAX_CHUNK_SECONDS = 3600.0  # one accept() call may carry up to an hour of audio
MAX_SAMPLE_RATE = 384_000
PEAK_HOLD_S = 0.3  # a detection is reported at its score's peak, at most this long after the threshold crossing


def _check_graph(session, inputs: dict[str, tuple], outputs: list[str], where: str) -> None:
    """The manifest's description of a graph must be the graph's own: names, and every fixed dimension."""
    have = {i.name: i.shape for i in session.get_inputs()}
    if set(have) != set(inputs):
        raise BundleError(f"{where}: the manifest's encoder inputs {sorted(inputs)} are not the graph's {sorted(have)}")
    for name, shape in inputs.items():
        g = have[name]
        if len(g) != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(g, shape)):
            raise BundleError(f"{where}: the manifest gives {name} the shape {list(shape)}; the graph has {g}")
    out = [o.name for o in session.get_outputs()]
    if sorted(out) != sorted(outputs):
        raise BundleError(f"{where}: the manifest's encoder outputs are not the graph's {out}")


def _load_array(bundle: Bundle, key: str, ndim: int) -> np.ndarray:
    path = bundle.path(key)
    try:  # the header first: a shape the file's bytes do not hold is refused before anything is allocated
        with open(path, "rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            if dtype.hasobject:
                raise ValueError("object arrays are never loaded")
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if need != path.stat().st_size - f.tell():
                raise ValueError(f"its header claims shape {shape} ({need} bytes), the file holds "
                                 f"{path.stat().st_size - f.tell()}")
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BundleError(f"{path}: not a numpy array file: {e}") from None
    if a.ndim != ndim or a.dtype.kind != "f" or not np.all(np.isfinite(a)):
        raise BundleError(f"{bundle.path(key)}: expected a finite {ndim}-D float array, got {a.dtype} {a.shape}")
    return a.astype(np.float32)


@dataclass(frozen=True)
class WordTime:
    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Detection:
    keyword: str
    score: float  # calibrated confidence in [0, 1]
    start_s: float  # keyword start, seconds from the stream's start (or last reset)
    end_s: float
    words: tuple[WordTime, ...] = ()  # per-word times (DSP), when the bundle has a phoneme table


@dataclass
class Keyword:
    name: str
    pronunciation: Pronunciation
    threshold: float
    matcher: CTCKeywordMatcher = field(repr=False)
    text_embeddings: np.ndarray | None = field(default=None, repr=False)  # (N, D) for the verifier
    norm: tuple[float, float] | None = None  # (mean, std) of log first-stage score on background speech
    class_table: tuple[str, ...] = ()  # the CTC class table its ids index (a stream refuses another table)


def _calibrate(raw: np.ndarray, n_phonemes: int, cal: dict, verifier_prob: np.ndarray | None = None,
               norm: tuple[float, float] | None = None) -> np.ndarray:
    """First-stage score (per-phoneme path likelihood ratio in (0, 1]) and, when the bundle has one,
    the verifier's match probability -> confidence in [0, 1] (logistic, coefficients from the manifest).

    With `norm` (Z-norm), the log score is first standardized by the keyword's own score distribution
    on background speech, so that a threshold means a similar false-accept rate for every keyword
    (some phoneme sequences turn up in everyday speech far more often than others). The coefficients
    were fitted on held-out TTS voices.
    """
    z = np.log(np.maximum(raw, 1e-30))
    if norm is not None:
        z = (z - norm[0]) / norm[1]
    a, b, c = cal["slope"], cal["offset"], cal["per_phoneme"]  # required by the manifest check
    logit = a * z + b + c * n_phonemes
    if verifier_prob is not None:
        p = np.clip(verifier_prob, 1e-6, 1 - 1e-6)
        logit = logit + cal["verifier"] * np.log(p / (1 - p))  # present with a verifier (manifest check)
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))


class KeywordSpotter:
    """A loaded model bundle plus the enrolled keywords."""

    def __init__(self, bundle: Bundle, int8: bool = False, threads: int = 1, providers: list[str] | None = None,
                 skip_gates: bool = True, speech_gate: bool = True):
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 256:
            raise ValueError(f"threads must be an integer in [1, 256], got {threads!r}")
        self.bundle = bundle
        m = bundle.manifest
        where = str(bundle.root / "manifest.json")
        if m.target != "onnx":
            raise ValueError(f"bundle {bundle.root} targets {m.target!r}; this runtime runs ONNX bundles "
                             "(Core ML bundles run on Apple devices through Core ML)")
        self.sample_rate = m.sample_rate
        self.chunk_samples = m.chunk_samples
        self.frame_seconds = m.frame_seconds
        self.calibration = m.calibration.to_dict()
        self.matcher_options = m.matcher
        # the CTC class table: log_probs column i is classes[i]; phoneme symbols map to their column
        classes, self.blank = m.classes, m.blank
        self.class_of = {c: i for i, c in enumerate(classes) if i != self.blank}
        self._table_row = {i: r for r, i in enumerate(i for i in range(len(classes)) if i != self.blank)}
        self.n_classes = len(classes)
        self.class_table = tuple(classes)
        self._enroll_lock = threading.Lock()  # enrollment's check-then-set of a name is one step
        self.gate_threshold = GATE_THRESHOLD
        # the longest a keyword path may last (frames): how much embedding history streams keep
        self.max_keyword_frames = (self.matcher_options.frames_base
                                   + self.matcher_options.frames_per_phoneme * MAX_KEYWORD_PHONEMES)
        int8 = int8 or not bundle.has("encoder")  # an int8-only bundle (what ships) runs int8
        self.int8 = int8
        key = "encoder_int8" if int8 else "encoder"
        if not bundle.has(key):
            raise BundleError(f"{where}: this bundle has no {'int8' if int8 else 'fp32'} encoder ({key})")
        self.session = open_session(bundle.path(key), threads, providers)
        _check_graph(self.session, m.encoder.inputs, list(m.encoder.outputs), where)
        self.state_shapes = m.encoder.state_shapes
        self.state_pairs = dict(m.encoder.state_pairs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._graph_run = runner(self.session)
        self.modular = None
        prefix = "mod8." if int8 else "mod."
        mod_keys = [k for k in m.files if k.startswith(prefix)]
        self.speech_policy = None  # the speech gate's policy, when the bundle has one and it is used
        gate_session = None
        if bundle.has("speech_gate") and speech_gate:
            if not (skip_gates and mod_keys):
                raise ValueError(f"{bundle.root}: its speech gate skips the per-module graphs, so it needs them "
                                 "(skip_gates=True); load with speech_gate=False to run the single graph")
            self.speech_policy = m.speech_gate
            gate_session = open_session(bundle.path("speech_gate"), threads, providers)
        if skip_gates and mod_keys:  # closed gates skip their modules
            from heron.runtime.modular import ModularEncoder

            sessions = {k[len(prefix):]: open_session(bundle.path(k), threads, providers) for k in mod_keys}
            self.modular = ModularEncoder(sessions, m.layers, self.gate_threshold, self.n_classes,
                                          self.blank, self.state_shapes, gate_session, self.speech_policy)
        self.text_session = self.verifier_session = None
        if bundle.has("text_encoder") and bundle.has("matcher"):
            self.text_session = open_session(bundle.path("text_encoder"), threads, providers)
            self.verifier_session = open_session(bundle.path("matcher"), threads, providers)
            v = m.verifier
            self.verifier_max_frames = v.max_frames
            self.verifier_margin = v.margin_frames
            self.verifier_min_raw = v.min_first_stage  # below this the first stage rejects alone
        self.head = None  # the embedding head's check of first-stage candidates (HeadCheck), when the bundle has it
        if m.embedding_head is not None:
            from heron.runtime.speech_embedding import SpeechEmbedding

            self.head = m.embedding_head
            self.head_features = SpeechEmbedding(sessions=(open_session(bundle.path("speech_embedding_mel"), threads, providers),
                                                           open_session(bundle.path("speech_embedding"), threads, providers)))
            self.head_session = open_session(bundle.path("embedding_head"), threads, providers)
            if self.head_session.get_outputs()[0].shape[-1] != self.n_classes:
                raise BundleError(f"{where}: the embedding head's log_probs do not have {self.n_classes} classes")
        self.phoneme_table = None  # (39, D) representative phoneme vectors: DSP word partition
        if bundle.has("phoneme_table"):
            self.phoneme_table = _load_array(bundle, "phoneme_table", 2)
            if self.phoneme_table.shape[0] != len(self.class_of):
                raise BundleError(f"{where}: the phoneme table has {self.phoneme_table.shape[0]} rows, not "
                                  f"{len(self.class_of)} (one per phoneme class)")
        self.background = None  # (segments, frames, classes) log-probs of background speech, for Z-norm
        if bundle.has("background"):
            self.background = _load_array(bundle, "background", 3)
            if self.background.shape[2] != self.n_classes:
                raise BundleError(f"{where}: the background bank has {self.background.shape[2]} classes, "
                                  f"not {self.n_classes}")
            S, T = self.background.shape[:2]
            if not (MIN_BANK_SEGMENTS <= S <= MAX_BANK_SEGMENTS and self.max_keyword_frames // 4 <= T <= 100_000):
                raise BundleError(f"{where}: the background bank is {S} segments of {T} frames; Z-norm needs "
                                  f"{MIN_BANK_SEGMENTS}..{MAX_BANK_SEGMENTS} segments of at least "
                                  f"{self.max_keyword_frames // 4} frames (a keyword's length)")
            mass = np.exp(self.background).sum(axis=2)
            if mass.min() < 0.5 or mass.max() > 1.5:
                raise BundleError(f"{where}: the background bank's rows are not log-probabilities (they must sum "
                                  "to 1 over the classes)")
        # a mobile bundle (heron kws export --mobile) cannot enroll: its keywords come from keyword files
        self.mobile = m.mobile is not None
        self.identities = (bundle.identity,) + ((m.mobile.made_from,) if m.mobile is not None else ())
        self.keywords: dict[str, Keyword] = {}
        self._check_quiet(where)

    def _check_quiet(self, where: str) -> None:
        """What the manifest's numbers mean, checked on the model itself at load (a few milliseconds):
        digital silence and white noise, run through the single graph, must not fire common keywords.
        A calibration, background bank or class table edited so that the spotter fires on everything
        is refused here even where no check of the numbers alone catches it."""
        if self.background is None and self.calibration["znorm"]:
            return  # a mobile bundle: Z-norm statistics come with each keyword file
        probes = [[self.class_of[p] for p in ph] for ph in PROBE_KEYWORDS if all(p in self.class_of for p in ph)]
        kws = [self.make_keyword(c) for c in probes]
        if self.background is not None:  # background speech: common keywords score above the floor on most of it
            floor = math.log(SCORE_FLOOR) + 1e-3
            for kw in kws:
                at_floor = float(np.mean(np.log(np.maximum(kw.matcher.max_scores_batch(self.background), 1e-300)) <= floor))
                if at_floor > 0.5:
                    raise BundleError(f"{where}: its background bank is not background speech (a common "
                                      f"{kw.matcher.n}-phoneme keyword scores the floor on {at_floor:.0%} of it): the "
                                      "bank was edited or does not belong to this encoder")
        n, thr = self.chunk_samples, float(self.calibration["threshold"])
        noise = (0.1 * np.random.default_rng(0).standard_normal(2 * n)).astype(np.float32)
        for what, audio in (("digital silence", np.zeros(2 * n, np.float32)), ("white noise", noise)):
            state = {k: np.zeros(v, np.float32) for k, v in self.state_shapes.items()}
            lps = []
            for i in range(0, len(audio), n):
                lp, _, _, state = self._run_graph(audio[i:i + n], state)
                lps.append(lp)
            lp = np.concatenate(lps)
            for kw in kws:
                raw, _, _ = kw.matcher.step(lp, kw.matcher.init_state())
                conf = float(_calibrate(raw, kw.matcher.n, self.calibration, norm=kw.norm).max())
                if conf >= thr:
                    raise BundleError(f"{where}: fires on {what} (confidence {conf:.3f} >= threshold {thr} for a "
                                      f"{kw.matcher.n}-phoneme keyword): its calibration, background bank or class "
                                      "table was edited or does not belong to this encoder")

    @classmethod
    def load(cls, bundle: str | Path | None = None, int8: bool = False, threads: int = 1,
             skip_gates: bool = True, speech_gate: bool = True, sha256: str | None = None) -> "KeywordSpotter":
        """Load a bundle folder (default: the one shipped with heron); checksums are verified.

        sha256: the bundle's identity (its manifest.sha256) as you recorded it; another manifest is refused.
        The shipped bundle's identity is pinned in heron itself (heron.runtime.pinned).

        skip_gates: run the encoder module by module so closed gates skip work (when the bundle
        has the modular graphs); False runs the single-graph encoder (same outputs).
        speech_gate: use the bundle's speech gate, if it has one (chunks without speech run no encoder
        module); False runs every chunk through the encoder."""
        return cls(load_bundle(bundle, sha256=sha256), int8=int8, threads=threads, skip_gates=skip_gates,
                   speech_gate=speech_gate)

    # --- keywords ---------------------------------------------------------------------------------
    def enroll(self, text: str, sensitivity: float = 0.5, name: str | None = None) -> Keyword:
        """Enroll a keyword from text. sensitivity in [0, 1]: higher fires more easily.

        Raises ValueError for empty, unpronounceable or too-long text, or a name already enrolled.
        """
        if isinstance(sensitivity, bool) or not isinstance(sensitivity, (int, float)) \
                or not 0.0 <= sensitivity <= 1.0:
            raise ValueError(f"sensitivity must be a number in [0, 1], got {sensitivity!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"a keyword name must be a non-empty string, got {name!r}")
        if self.mobile:
            raise ValueError("a mobile bundle cannot enroll keywords from text (it has no background bank): enroll "
                             "with the bundle it was made from (heron kws enroll TEXT --out F.kw) and load the "
                             "keyword file (add_keyword_file)")
        pron = pronounce(text)
        name = name or " ".join(pron.words)
        classes = self.classes(pron)
        kw = self.make_keyword(classes, name, self.sensitivity_threshold(sensitivity, len(classes)), pron)
        return self._add(kw)

    def _add(self, kw: Keyword) -> Keyword:
        with self._enroll_lock:
            if kw.name in self.keywords:
                raise ValueError(f"keyword {kw.name!r} is already enrolled (unenroll it first)")
            self.keywords[kw.name] = kw
        return kw

    def keyword_file(self, kw: Keyword | str) -> KeywordFile:
        """An enrolled keyword as a keyword file's contents (`write_keyword_file` writes it): everything
        a device runtime needs for it, bound to this bundle's identity."""
        kw = self.keywords[kw] if isinstance(kw, str) else kw
        if kw.pronunciation is None or kw.class_table != self.class_table:
            raise ValueError(f"keyword {kw.name!r} was not enrolled from text by this spotter")
        p = kw.pronunciation
        return KeywordFile(self.identities[-1], kw.name, p.text, p.words, p.word_phonemes,
                           tuple(int(c) for c in kw.matcher.labels[0::2]), float(kw.threshold), kw.norm,
                           int(kw.matcher.max_frames))

    def add_keyword_file(self, path: str | Path, name: str | None = None) -> Keyword:
        """Enroll a keyword from a keyword file (`heron kws enroll TEXT --out F.kw`). A file made for
        another bundle, edited, truncated or oversized raises KeywordFileError (a ValueError) in one line."""
        kf = read_keyword_file(path)
        where = str(path)
        check_for_bundle(kf, where, self.identities, self.class_table, self.blank, self.matcher_options.frames_base,
                         self.matcher_options.frames_per_phoneme, bool(self.calibration["znorm"]))
        pron = Pronunciation(kf.text, kf.words, kf.word_phonemes)
        kw = self.make_keyword(list(kf.classes), name or kf.name, kf.threshold, pron, norm=kf.znorm)
        if self.background is not None and kf.znorm is not None:  # the bank is here: the statistics must be its
            mine = self.make_keyword(list(kf.classes)).norm
            if mine is None or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(kf.znorm, mine)):
                raise KeywordFileError(f"{where}: its Z-norm statistics are not this bundle's (edited?)")
        return self._add(kw)

    def sensitivity_threshold(self, sensitivity: float, n_phonemes: int) -> float:
        """A keyword's confidence threshold for a sensitivity in [0, 1]: 0.5 is the calibrated default
        threshold t; below 0.5 it rises linearly to min(2t, 0.999) at 0. Above 0.5 it falls linearly
        to the loosest threshold that still asks for a score one standard deviation above the keyword's
        mean on background speech (with the Z-norm bank; never above the default), or to 0.001
        without a bank."""
        base = float(self.calibration["threshold"])
        if sensitivity <= 0.5:
            return float(min(0.999, base + (0.5 - sensitivity) * 2 * min(base, 1 - base)))
        lo = 0.001
        if self.background is not None:
            c = self.calibration
            logit = c["slope"] * 1.0 + c["offset"] + c["per_phoneme"] * n_phonemes
            lo = min(base, max(0.001, 1 / (1 + math.exp(-max(-60.0, min(60.0, logit))))))
        return float(base - (base - lo) * (2 * sensitivity - 1))

    def classes(self, pron: Pronunciation) -> list[int]:
        """A pronunciation's CTC classes, through the bundle's class table."""
        return [self.class_of[p] for p in pron.phonemes]

    def make_keyword(self, classes: list[int], name: str = "_", threshold: float = 0.5,
                     pron: Pronunciation | None = None, norm: tuple[float, float] | None = None) -> Keyword:
        """Everything a keyword needs for matching: the first-stage matcher, its background
        normalization and (with a verifier) its text embeddings. `classes`: ids into the bundle's class
        table (not the blank). `norm`: the Z-norm statistics from a keyword file (default: computed on
        the bundle's background bank)."""
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))
               or not 0 <= c < self.n_classes or c == self.blank]
        if bad or not classes:
            raise ValueError(f"keyword classes must be phoneme ids in 0..{self.n_classes - 1} other than the blank "
                             f"({self.blank}); got {list(classes)[:8]}")
        matcher = CTCKeywordMatcher([int(c) for c in classes], self.matcher_options, blank=self.blank)
        if self.mobile and norm is None and self.calibration["znorm"]:
            raise ValueError("a mobile bundle matches only keywords from keyword files (add_keyword_file)")
        if self.background is not None and norm is None:
            z = np.log(np.maximum(matcher.max_scores_batch(self.background), 1e-30))
            norm = (float(z.mean()), float(max(z.std(), 0.05)))
        text_emb = None
        if self.text_session is not None:
            text_emb = self.text_session.run(None, {"phoneme_ids": np.asarray([classes], np.int64)})[0][0]
        return Keyword(name, pron, threshold, matcher, text_emb, norm, self.class_table)  # type: ignore[arg-type]

    def unenroll(self, name: str | Keyword) -> None:
        """Forget an enrolled keyword (its name, or the Keyword); streams made before keep their own."""
        name = name.name if isinstance(name, Keyword) else name
        if not isinstance(name, str) or name not in self.keywords:
            raise KeyError(f"keyword {name!r} is not enrolled; enrolled: {sorted(self.keywords)}")
        del self.keywords[name]

    def stream(self, keywords: Iterable[Keyword | str] | None = None, sample_rate: int | None = None, refractory_s: float = 1.0,
               smoothing_frames: int = 1) -> "Stream":
        """A new independent stream listening for `keywords` (Keyword objects or enrolled names;
        default: every keyword enrolled now; later enrollments reach it only through
        `stream.add_keyword`). Audio at another sample rate is resampled (soxr)."""
        if keywords is None:
            chosen = list(self.keywords.values())
        else:
            chosen = [self.keywords[k] if isinstance(k, str) and k in self.keywords else k for k in keywords]
            bad = [k for k in chosen if not isinstance(k, Keyword)]
            if bad:
                raise ValueError(f"stream(keywords=...) takes Keyword objects or enrolled names; unknown: {bad[:3]}")
        return Stream(self, chosen, self.sample_rate if sample_rate is None else sample_rate, refractory_s,
                      smoothing_frames)

    # --- encoder ------------------------------------------------------------------------------------
    def init_state(self) -> dict[str, np.ndarray]:
        st = {n: np.zeros(s, np.float32) for n, s in self.state_shapes.items()}
        if self.speech_policy is not None:
            st[SPEECH_STATE] = self.speech_policy.init_state()
            # the audio before the chunk: the front end's context and the last PAST_CHUNKS chunks
            st[SPEECH_PAST] = np.zeros((1, self.state_shapes["cached_audio"][1] + PAST_CHUNKS * self.chunk_samples),
                                       np.float32)
            st[SPEECH_STEADY] = np.array([0.0, np.nan, 0.0, np.nan], np.float32)
        return st

    def run_chunk(self, chunk: np.ndarray, state: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(chunk_samples,) float32 -> (log_probs (C, classes), embeddings (C, D), gate_probs (layers, 4),
        new state)."""
        if self.modular is not None:
            return self.modular.run_chunk(chunk, state)
        return self._run_graph(chunk, state)

    def _run_graph(self, chunk: np.ndarray, state: dict[str, np.ndarray]):
        """run_chunk on the single graph (every module computed; `state` holds the graph's states only)."""
        feeds = {"audio_chunk": chunk.reshape(1, -1).astype(np.float32), **state}
        outs = dict(zip(self.output_names, self._graph_run(feeds)))
        new = {n: outs[self.state_pairs[n]] for n in state}
        return outs["log_probs"][0], outs["embeddings"][0], outs["gate_probs"][0], new

    def encode(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whole clip -> (log-probs (T, classes), embeddings (T, D), gate probs (chunks, layers, 4)).

        For evaluation: encode once, then match any number of keywords with `match_encoded`.
        """
        n = self.chunk_samples
        audio = np.concatenate([np.asarray(audio, np.float32), np.zeros((-len(audio)) % n, np.float32)])
        state = self.init_state()
        lps, embs, gates = [], [], []
        for i in range(0, len(audio), n):
            lp, emb, g, state = self.run_chunk(audio[i:i + n], state)
            lps.append(lp), embs.append(emb), gates.append(g)
        return np.concatenate(lps), np.concatenate(embs), np.stack(gates)

    def head_log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Audio (float, the model's rate) -> the embedding head's (frames, classes) log-probabilities, the
        window padded with silence as in the head's training; no frames when it is too short."""
        return self.run_head(self.head_features.padded(audio))

    def run_head(self, feats: np.ndarray) -> np.ndarray:
        """(frames, 96) speech_embedding frames -> the head's (2 frames, classes) log-probabilities."""
        if len(feats) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        return self.head_session.run(None, {"embeddings": feats[None].astype(np.float32)})[0][0]

    def head_factor(self, head_score: np.ndarray) -> np.ndarray:
        """The head's per-phoneme score h in (0, 1] -> the factor on the first-stage score:
        exp(weight * (log h - offset)); h at the score floor gives the lowest factor."""
        h = self.head
        return np.exp(h.weight * (np.log(np.maximum(head_score, SCORE_FLOOR)) - h.offset))

    def verify(self, kw: Keyword, emb_window: np.ndarray) -> float:
        """Second stage: probability that the keyword is spoken in this embedding window."""
        w = emb_window[-self.verifier_max_frames:]
        if len(w) < 2:
            w = np.concatenate([np.zeros((2 - len(w), w.shape[1]), np.float32), w])
        p, _ = self.verifier_session.run(None, {"audio_window": w[None].astype(np.float32),
                                                "text_embeddings": kw.text_embeddings[None]})
        return float(p[0])

    def keyword_confidence(self, kw: Keyword, raw: np.ndarray, starts: np.ndarray, emb: np.ndarray | None,
                           emb_first_frame: int, frame0: int) -> np.ndarray:
        """Per-frame confidence for frames frame0.. (raw, starts from the CTC matcher); `emb` holds
        embeddings from absolute frame `emb_first_frame` on (None: first stage only)."""
        if self.verifier_session is None or kw.text_embeddings is None or emb is None:
            return _calibrate(raw, kw.matcher.n, self.calibration, norm=kw.norm)
        probs = np.full(len(raw), 1e-6)
        candidates = np.flatnonzero(raw >= self.verifier_min_raw)
        for i in candidates:
            end = frame0 + i + 1 - emb_first_frame
            start = max(0, int(starts[i]) - self.verifier_margin - emb_first_frame)
            if end > 0:
                probs[i] = self.verify(kw, emb[start:end])
        # frames the first stage rejects keep p = 1e-6: tiny confidences, still ordered by the first stage
        return _calibrate(raw, kw.matcher.n, self.calibration, probs, norm=kw.norm)

    def word_times(self, kw: Keyword, emb_window: np.ndarray, start_frame: int,
                   voiced: np.ndarray | None = None) -> tuple[WordTime, ...]:
        """Split a detection's embedding window into the keyword's words (DSP over representative
        phoneme vectors, over the frames where a phoneme is heard); seconds from the stream start."""
        if self.phoneme_table is None or kw.pronunciation is None or len(emb_window) < len(kw.pronunciation.words):
            return ()
        from heron.runtime.dsp import dsp_partition

        vecs, i = [], 0
        ids = [self._table_row[c] for c in kw.matcher.labels[0::2]]
        for w in kw.pronunciation.word_phonemes:
            vecs.append(self.phoneme_table[ids[i:i + len(w)]].mean(axis=0))
            i += len(w)
        _, segs = dsp_partition(emb_window, np.stack(vecs), voiced=voiced)
        if not segs:
            return ()
        fs = self.frame_seconds
        return tuple(WordTime(word, (start_frame + a) * fs, (start_frame + b) * fs)
                     for word, (a, b) in zip(kw.pronunciation.words, segs))

    def match_encoded(self, text_or_classes: str | Sequence[int], log_probs: np.ndarray, emb: np.ndarray | None = None
                      ) -> tuple[float, float, float]:
        """Best (confidence, start_s, end_s) of a keyword (text or CTC classes) over encoded frames."""
        if isinstance(text_or_classes, str):
            classes = self.classes(pronounce(text_or_classes))
        else:
            classes = list(text_or_classes)
        kw = self.make_keyword(classes)
        m = kw.matcher
        raw, starts, _ = m.step(log_probs, m.init_state())
        conf = self.keyword_confidence(kw, raw, starts, emb, 0, 0)
        i = int(np.argmax(conf))
        return float(conf[i]), float(starts[i] * self.frame_seconds), float((i + 1) * self.frame_seconds)

    def score_file(self, audio: np.ndarray | Iterable[np.ndarray], keyword: str, sample_rate: int | None = None) -> tuple[float, float | None, float | None]:
        """Best (score, start_s, end_s) of one enrolled keyword over a whole recording: an array of
        samples, or an iterable of blocks (e.g. `heron.runtime.audio.AudioFile(path).blocks()`, so
        that hours of audio cost one block of memory). `sample_rate`: the audio's (default: the model's)."""
        if keyword not in self.keywords:
            raise ValueError(f"keyword {keyword!r} is not enrolled; enrolled: {sorted(self.keywords)}")
        st = self.stream([self.keywords[keyword]], sample_rate=sample_rate)
        st.track_best = True
        for block in ([audio] if isinstance(audio, np.ndarray) else audio):
            st.accept(block)
        st.flush()
        if keyword not in st.best:
            raise ValueError(f"keyword {keyword!r} is not enrolled (or the audio was empty)")
        return st.best[keyword]


class Stream:
    """One audio stream: buffers samples, runs the encoder chunk by chunk, matches its keywords."""

    def __init__(self, spotter: KeywordSpotter, keywords: list[Keyword], sample_rate: int, refractory_s: float,
                 smoothing_frames: int):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
                or not 1000 <= sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be an integer in [1000, {MAX_SAMPLE_RATE}] Hz, got {sample_rate!r}")
        if not isinstance(refractory_s, (int, float)) or not math.isfinite(refractory_s) or not 0 <= refractory_s <= 3600:
            raise ValueError(f"refractory_s must be a finite number of seconds in [0, 3600], got {refractory_s!r}")
        if isinstance(smoothing_frames, bool) or not isinstance(smoothing_frames, int) or not 1 <= smoothing_frames <= 1000:
            raise ValueError(f"smoothing_frames must be an integer in [1, 1000], got {smoothing_frames!r}")
        self.spotter = spotter
        self.keywords: dict[str, Keyword] = {}
        for kw in keywords:
            self._check_new(kw)
            self.keywords[kw.name] = kw
        self.sample_rate = int(sample_rate)
        self.refractory_s = refractory_s
        self.smoothing_frames = smoothing_frames
        self.track_best = False  # keep the best (score, start, end) per keyword (whole-file scoring)
        self.record_scores = False  # keep every frame's confidence per keyword (evaluation)
        self.record_gates = False  # keep every chunk's gate probabilities (analysis); off: memory stays flat
        self.reset()

    def reset(self) -> None:
        """Forget all audio and matcher state (as if the stream were new)."""
        self._resampler = None
        if self.sample_rate != self.spotter.sample_rate:  # a fresh resampler: no samples of the old audio
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, self.spotter.sample_rate, 1, dtype="float32")
        self._padded_s = 0.0  # silence flush() added to finish a chunk: later times do not count it
        self._buf = np.zeros(0, np.float32)
        self._emb: np.ndarray | None = None  # recent encoder embeddings (verifier, word times)
        self._voiced: np.ndarray | None = None  # per recent frame: is a phoneme heard (not blank)
        self._emb_first = 0  # absolute frame index of self._emb[0]
        self._audio = np.zeros(0, np.float32)  # recent audio, for the embedding head (bundles with one)
        self._audio_first = 0  # absolute sample index of self._audio[0]
        self._head_event: _HeadEvent | None = None  # the head's window over consecutive chunks with candidates
        sp = self.spotter
        if sp.head is not None:
            self._audio_keep = int((sp.max_keyword_frames * sp.frame_seconds + sp.head.before_s) * sp.sample_rate
                                   + 2 * sp.chunk_samples)
        self._quiet_frames = 0  # how many of the last frames came from chunks the speech gate closed
        self._enc = self.spotter.init_state()
        self._tracks: dict[str, _Track] = {}
        self._bank: _Bank | None = None  # the keywords' matchers stepped together (rebuilt when they change)
        self._frames = 0
        self.best: dict[str, tuple[float, float | None, float | None]] = {}
        self.score_log: dict[str, list[np.ndarray]] = {}
        self.gate_log: list[np.ndarray] = []
        self.modules_closed = np.zeros(4)  # per module type: (layer, chunk) slots whose gate was closed
        self.module_slots = 0
        self.chunks = 0  # chunks the encoder was asked for
        self.chunks_without_speech = 0  # ... of which the speech gate closed (no encoder module ran)

    def _check_new(self, kw: Keyword) -> None:
        if not isinstance(kw, Keyword):
            raise ValueError(f"add_keyword takes a Keyword (from spotter.enroll), got {type(kw).__name__}")
        if kw.class_table != self.spotter.class_table:
            raise ValueError(f"keyword {kw.name!r} was enrolled by a spotter with another phoneme class table: "
                             "enroll it with this stream's spotter")
        if kw.name in self.keywords:
            raise ValueError(f"this stream already listens for {kw.name!r} (remove_keyword it first)")

    def add_keyword(self, kw: Keyword) -> None:
        """Listen for another keyword from now on: its matcher starts at the stream's current frame, so
        its detections carry stream times."""
        self._check_new(kw)
        self.keywords[kw.name] = kw

    def remove_keyword(self, name: str | Keyword) -> None:
        """Stop listening for a keyword (its name, or the Keyword)."""
        name = name.name if isinstance(name, Keyword) else name
        if not isinstance(name, str) or name not in self.keywords:
            raise KeyError(f"this stream does not listen for {name!r}; it listens for {sorted(self.keywords)}")
        del self.keywords[name]
        self._tracks.pop(name, None)

    @property
    def skipped_fraction(self) -> np.ndarray:
        """Per module type (ffn1, attn, conv, ffn2): share of this stream's (layer, chunk) module runs that
        closed gates skipped (zeros when the spotter runs the single graph, which computes every module)."""
        if self.spotter.modular is None:
            return np.zeros(4)
        return self.modules_closed / max(1, self.module_slots)

    @staticmethod
    def _to_float(pcm: np.ndarray) -> np.ndarray:
        a = np.asarray(pcm)
        if a.ndim == 2:
            if a.shape[1] != 1:
                raise ValueError(f"expected mono audio, got {a.shape[1]} channels (shape {a.shape})")
            a = a[:, 0]
        elif a.ndim != 1:
            raise ValueError(f"expected a 1-D array of samples, got shape {a.shape}")
        if a.dtype == np.int16:
            return a.astype(np.float32) / 32768.0
        if a.dtype.kind in "iu":
            raise ValueError(f"integer audio must be int16, got {a.dtype}")
        if a.dtype.kind != "f":
            raise ValueError(f"audio must be int16 or float, got {a.dtype}")
        a = a.astype(np.float32, copy=False)
        # NaN and infinities propagate into the peak; max and min need no temporary array
        peak = max(float(a.max()), -float(a.min())) if a.size else 0.0
        if not math.isfinite(peak):
            raise ValueError("audio contains NaN or infinite samples; the chunk was not consumed")
        if peak > 1.0 + 1e-6:
            raise ValueError(f"float audio must be in [-1, 1] (got a peak of {peak:.3g}); pass int16 for integer PCM")
        return a

    def accept(self, pcm: np.ndarray) -> list[Detection]:
        """Feed samples; returns the detections completed by them. A bad chunk raises ValueError and
        leaves the stream as it was."""
        a = self._to_float(pcm)
        if a.size > MAX_CHUNK_SECONDS * self.sample_rate:
            raise ValueError(f"chunk of {a.size / self.sample_rate:.0f} s is longer than {MAX_CHUNK_SECONDS:.0f} s")
        if self._resampler is not None:
            a = self._resampler.resample_chunk(a)
        self._buf = np.concatenate([self._buf, a])
        return self._drain()

    def flush(self) -> list[Detection]:
        """The end of the audio so far (a file's end, a push-to-talk release): the resampler gives up
        the samples it holds, the buffered tail is padded with silence to a whole chunk and processed,
        and peaks still being waited for are reported. Audio given afterwards continues the stream's
        clock: times count the samples given, not the padding."""
        out: list[Detection] = []
        if self._resampler is not None:
            import soxr

            self._buf = np.concatenate([self._buf, self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
            self._resampler = soxr.ResampleStream(self.sample_rate, self.spotter.sample_rate, 1, dtype="float32")
        pad = 0
        if self._buf.size:
            n = self.spotter.chunk_samples
            pad = (-self._buf.size) % n
            self._buf = np.concatenate([self._buf, np.zeros(pad, np.float32)])
            out = self._drain()
        for tr in self._tracks.values():  # a peak still being waited for ends with the audio
            if tr.pending is not None:
                out.append(self._emit(tr))
        self._padded_s += pad / self.spotter.sample_rate
        return out

    def _drain(self) -> list[Detection]:
        sp = self.spotter
        n = sp.chunk_samples
        out: list[Detection] = []
        while self._buf.size >= n:
            chunk, self._buf = self._buf[:n], self._buf[n:]
            log_probs, emb, gates, self._enc = sp.run_chunk(chunk, self._enc)
            if sp.head is not None:  # the longest keyword window, the head's margin and this chunk
                self._audio = np.concatenate([self._audio, chunk])
                drop = max(0, len(self._audio) - self._audio_keep)
                self._audio, self._audio_first = self._audio[drop:], self._audio_first + drop
            if self.record_gates:
                self.gate_log.append(gates)
            closed = sp.speech_policy is not None and not self._enc[SPEECH_STATE][0]
            # a closed chunk ran no module: every gate counts as closed
            self.modules_closed += gates.shape[0] if closed else (gates <= sp.gate_threshold).sum(axis=0)
            self.module_slots += gates.shape[0]
            self.chunks += 1
            self.chunks_without_speech += closed
            if sp.verifier_session is not None or sp.phoneme_table is not None:
                keep = sp.max_keyword_frames + 2 + len(emb)  # the longest keyword window + margin
                if closed and self._quiet_frames >= keep and len(self._emb) == keep:
                    # the kept window is closed chunks only (zeros, no phoneme) and stays so: it just moves on
                    self._emb_first += len(emb)
                    self._quiet_frames += len(emb)
                    out.extend(self._match_frames(log_probs, closed))
                    self._frames += log_probs.shape[0]
                    continue
                self._quiet_frames = self._quiet_frames + len(emb) if closed else 0
                # frames where a phoneme (not blank) is heard; none in a closed chunk
                voiced = np.zeros(len(log_probs), bool) if closed else log_probs.argmax(axis=1) != sp.blank
                self._emb = emb if self._emb is None else np.concatenate([self._emb, emb])
                self._voiced = voiced if self._voiced is None else np.concatenate([self._voiced, voiced])
                drop = max(0, len(self._emb) - keep)
                self._emb, self._emb_first = self._emb[drop:], self._emb_first + drop
                self._voiced = self._voiced[drop:]
            out.extend(self._match_frames(log_probs, closed))
            self._frames += log_probs.shape[0]
        return out

    def _track(self, name: str, kw: Keyword) -> "_Track":
        """This stream's state for a keyword; one added while the stream runs starts at its current frame."""
        tr = self._tracks.get(name)
        if tr is None or tr.kw is not kw:
            tr = self._tracks[name] = _Track(kw, kw.matcher.init_state(self._frames))
        return tr

    def _emit(self, tr: "_Track") -> Detection:
        sp = self.spotter
        score, start, end = tr.pending
        tr.pending = None
        tr.last_fire = end * sp.frame_seconds
        words = ()
        off = self._padded_s  # stream times count the audio given, not flush()'s padding
        if self._emb is not None:
            a = max(0, start - self._emb_first)
            b = end - self._emb_first
            words = tuple(WordTime(w.word, w.start_s - off, w.end_s - off) for w in
                          sp.word_times(tr.kw, self._emb[a:b], self._emb_first + a, self._voiced[a:b]))
        return Detection(tr.kw.name, score, start * sp.frame_seconds - off, end * sp.frame_seconds - off, words)

    def _keyword_bank(self) -> "_Bank":
        """The matcher bank of the keywords listened for now; when they changed since the last chunk,
        the kept keywords' states move from the old bank into the new one."""
        tracks = [self._track(name, kw) for name, kw in self.keywords.items()]
        old = self._bank
        if old is None or len(old.tracks) != len(tracks) or any(a is not b for a, b in zip(old.tracks, tracks)):
            if old is not None:
                for tr, st in zip(old.tracks, old.matchers.unpack(old.state)):
                    tr.match = st
            bank = CTCMatcherBank([tr.kw.matcher for tr in tracks])
            norms = np.array([tr.kw.norm if tr.kw.norm is not None else (0.0, 1.0) for tr in tracks])
            self._bank = _Bank(tuple(tracks), bank, bank.pack([tr.match for tr in tracks]), norms[:, 0], norms[:, 1])
        return self._bank

    def _match_frames(self, log_probs: np.ndarray, closed: bool = False) -> list[Detection]:
        """Match this chunk's frames; `closed`: the speech gate closed the chunk (no speech), so no keyword
        path continues through it: the matchers restart after it and its frames score the floor."""
        dets: list[Detection] = []
        if not self.keywords:
            return dets
        sp = self.spotter
        bank = self._keyword_bank()
        if closed:
            T, K = log_probs.shape[0], len(bank.tracks)
            if self._still_quiet(bank):  # a closed chunk after a closed chunk: nothing can change but the clock
                bank.state = bank.matchers.init_state(self._frames + T)
                return dets
            raw = np.full((T, K), SCORE_FLOOR)
            starts = np.repeat(np.arange(self._frames, self._frames + T)[:, None], K, axis=1)
            bank.state = bank.matchers.init_state(self._frames + T)
        else:
            raw, starts, bank.state = bank.matchers.step(log_probs, bank.state)  # (T, K) each
        if sp.head is not None:  # the head checks the frames the first stage alone scores high enough
            first = _calibrate(raw, bank.matchers.n, sp.calibration, norm=(bank.norm_mean, bank.norm_std))
            raw = raw * self._head_factors(bank, first >= sp.head.min_confidence, starts)
        if sp.verifier_session is None:  # the first stage alone: calibrated for all keywords at once
            confs = _calibrate(raw, bank.matchers.n, sp.calibration, norm=(bank.norm_mean, bank.norm_std))
            bank.quiet_conf = confs[0].copy() if closed else None
        else:
            confs = np.stack([sp.keyword_confidence(tr.kw, raw[:, k], starts[:, k], self._emb, self._emb_first,
                                                    self._frames) for k, tr in enumerate(bank.tracks)], axis=1)
        for k, tr in enumerate(bank.tracks):
            name = tr.kw.name
            if self.record_scores:
                self.score_log.setdefault(name, []).append(confs[:, k].copy())  # before smoothing
            if self.smoothing_frames > 1:  # the mean of the last smoothing_frames confidences
                for i, v in enumerate(confs[:, k].tolist()):
                    tr.recent.append(v)
                    del tr.recent[:-self.smoothing_frames]
                    confs[i, k] = np.mean(tr.recent)
        # only keywords above their threshold or waiting for a peak need the per-frame rules
        busy = (confs >= np.array([tr.kw.threshold for tr in bank.tracks])).any(axis=0)  # thresholds may change
        for k, tr in enumerate(bank.tracks):
            name, conf = tr.kw.name, confs[:, k]
            if self.track_best:
                i = int(np.argmax(conf))
                if name not in self.best or conf[i] > self.best[name][0]:
                    self.best[name] = (float(conf[i]), float(starts[i, k] * sp.frame_seconds - self._padded_s),
                                       float((self._frames + i + 1) * sp.frame_seconds - self._padded_s))
            if busy[k] or tr.above or tr.pending is not None:
                dets.extend(self._frame_rules(tr, conf, starts[:, k]))
        return dets

    def _head_factors(self, bank: "_Bank", cand: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(T, K) factors on this chunk's first-stage scores from the embedding head, for the candidate
        frames `cand` (T, K); the lowest factor elsewhere. Consecutive chunks with candidates form one event:
        the head's window starts before_s before the earliest candidate path and runs to the stream's latest
        audio, and later chunks of the event extend it (its embedding frames are kept); a chunk without
        candidates ends the event (a window kept through gaps would embed the gaps too: measured slower)."""
        sp, h = self.spotter, self.spotter.head
        factors = np.full(cand.shape, float(sp.head_factor(np.array(SCORE_FLOOR))))
        if not cand.any():
            self._head_event = None
            return factors
        per_frame = int(round(sp.frame_seconds * sp.sample_rate))  # samples per encoder frame
        first = max(self._audio_first, int(starts[cand].min()) * per_frame - int(h.before_s * sp.sample_rate))
        ev = self._head_event
        end = self._audio_first + len(self._audio)
        if ev is None or first < ev.start or end - ev.start > self._audio_keep:  # new, reaching back, or too long
            ev = self._head_event = _HeadEvent(first)
        lp = ev.log_probs(sp, self._audio[ev.start + ev.n_audio - self._audio_first:])
        # every keyword's best path in the window at once (the packed matchers; one pass for ten keywords)
        best = (bank.matchers.step(lp, bank.matchers.init_state())[0].max(axis=0) if len(lp)
                else np.full(len(bank.tracks), SCORE_FLOOR))
        for k in np.flatnonzero(cand.any(axis=0)):
            factors[cand[:, k], k] = sp.head_factor(np.array(best[k]))
        return factors

    def _still_quiet(self, bank: "_Bank") -> bool:
        """True when the previous chunk was closed too and this one cannot change anything but the
        matchers' clock: the same floor confidences again (the best kept needs a higher one), below every
        threshold, no peak pending, no score log or smoothing to feed."""
        return (bank.quiet_conf is not None and not self.record_scores and self.smoothing_frames == 1
                and not any(tr.above or tr.pending is not None for tr in bank.tracks)
                and all(c < tr.kw.threshold for c, tr in zip(bank.quiet_conf.tolist(), bank.tracks)))

    def _frame_rules(self, tr: "_Track", conf: np.ndarray, starts: np.ndarray) -> list[Detection]:
        """One keyword's threshold crossing, refractory period and wait for the peak, frame by frame."""
        fs = self.spotter.frame_seconds
        hold = max(1, int(round(PEAK_HOLD_S / fs)))
        dets: list[Detection] = []
        kw = tr.kw
        for i, v in enumerate(conf):
            end = self._frames + i + 1  # frames are absolute: the stream's count since its start
            t_end = end * fs
            # the detection reports the peak: wait while the score still rises (at most PEAK_HOLD_S)
            if tr.pending is not None:
                if v > tr.pending[0]:
                    tr.pending = (float(v), int(starts[i]), end)
                tr.pending_age += 1
                if v < tr.pending[0] or tr.pending_age >= hold:
                    dets.append(self._emit(tr))
            above = v >= kw.threshold
            if above and not tr.above and tr.pending is None:
                # one event per spoken keyword: wait out the refractory period, and never fire
                # again on a path that starts inside the previous detection
                if t_end - tr.last_fire >= self.refractory_s and starts[i] * fs >= tr.last_fire:
                    tr.pending, tr.pending_age = (float(v), int(starts[i]), end), 0
            tr.above = above
        return dets


@dataclass
class _Bank:
    """A stream's keywords stepped together: their tracks (in order), the packed matcher and its state,
    and their Z-norm (mean, std) for calibrating them all at once."""

    tracks: tuple["_Track", ...]
    matchers: CTCMatcherBank
    state: CTCMatchState
    norm_mean: np.ndarray
    norm_std: np.ndarray
    quiet_conf: np.ndarray | None = None  # set by a chunk the speech gate closed: each keyword's floor confidence


@dataclass
class _HeadEvent:
    """The embedding head's window while chunks with candidates follow each other: the audio from `start`
    (absolute sample) on, padded with PAD_SECONDS of silence each side as in the head's training. Each call
    appends the new audio; embedding frames that lie wholly inside the audio are computed once and kept,
    and only the new ones and those reaching into the closing silence are computed again. (The mel graph
    floors its output relative to the loudest part of its input, so a kept frame may differ slightly from
    embedding the whole window at once when a louder part arrives later; the head's scores stay the same
    however the audio is chunked, since the stream's chunks are fixed.)"""

    start: int
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kept: np.ndarray | None = None  # the embedding frames wholly inside the audio (computed once)

    @property
    def n_audio(self) -> int:
        return len(self.audio)

    def log_probs(self, sp: "KeywordSpotter", new_audio: np.ndarray) -> np.ndarray:
        from heron.runtime.speech_embedding import DIM, PAD_SECONDS, SAMPLE_RATE, STEP_FRAMES, WINDOW_FRAMES, n_frames

        if self.kept is None:
            self.kept = np.zeros((0, DIM), np.float32)
        self.audio = np.concatenate([self.audio, new_audio])
        pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), np.float32)
        spec = sp.head_features.mels(np.concatenate([pad, self.audio, pad]))
        n = max(0, (len(spec) - WINDOW_FRAMES) // STEP_FRAMES + 1)
        inside = min(n, n_frames(len(pad) + len(self.audio)))  # frames that no later audio reaches into
        feats = np.concatenate([self.kept, sp.head_features.from_mels(spec, np.arange(len(self.kept), n))])
        self.kept = feats[:max(inside, len(self.kept))]
        return sp.run_head(feats)


@dataclass
class _Track:
    """One keyword's matching state inside one stream."""

    kw: Keyword
    match: CTCMatchState
    recent: list[float] = field(default_factory=list)  # last smoothing_frames confidences
    above: bool = False  # was the last frame above the threshold
    last_fire: float = -math.inf  # end time (s) of the last detection
    pending: tuple[float, int, int] | None = None  # (peak score, start frame, end frame) not yet reported
    pending_age: int = 0  # frames since the threshold crossing
