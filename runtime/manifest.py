"""The bundle schema: one place that reads, checks and writes a bundle's manifest.json.

A heron bundle is a folder: manifest.json (what a runtime needs to know), manifest.sha256 (the sha256 of
manifest.json, the bundle's identity) and the files the manifest lists in its file table, each with its
path inside the folder, sha256 and size. Keyword-spotting and language-model bundles share that table.

    m = KwsManifest.from_dict(json.loads(text), where)   # every field present, typed, in range, consistent
    m.to_dict()                                          # what export writes (from_dict reads it back)

Each `from_dict` raises one BundleError naming the field; no field is read before it is checked. Export
imports the constants below (formats, gate names, the blank symbol) instead of defining its own.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heron.runtime.ctc_kws import MatcherOptions
from heron.runtime.phonemes import MAX_KEYWORD_PHONEMES, PHONEMES
from heron.runtime.speech_gate import GatePolicy

MANIFEST, IDENTITY = "manifest.json", "manifest.sha256"
KWS_FORMAT = "heron-kws-bundle/1"  # what export writes
KWS_FORMATS = (KWS_FORMAT,)  # what the runtime reads
LM_FORMAT = "heron-lm-onnx/2"  # the shared file table ("files")
LM_FORMAT_V1 = "heron-lm-onnx/1"  # separate "sha256" and "bytes" tables: still read, converted to the file table
LM_FORMATS = (LM_FORMAT_V1, LM_FORMAT)
LM_COREML_FORMAT = "heron-lm-coreml/2"  # a Core ML LM bundle (Apple devices run it; heron checks and writes it)
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 34  # a file the manifest may list (a 7 B model's fp16 weights fit)
MAX_STATE_ELEMENTS = 1 << 22  # one state tensor; the shipped encoder's largest holds 4,096
GATE_NAMES = ("ffn1", "attn", "conv", "ffn2")  # a conformer layer's gated modules, in order
GATE_THRESHOLD = 0.5  # a module runs when its gate probability is above this (heron.models.conformer trains it so)
BLANK_SYMBOL = "<blank>"  # the CTC blank's name in the class table
FEATURES_TYPE = "log-mel (in graph)"  # the encoder graph computes its own features from audio
# what a device needs (heron kws export --mobile): the encoder, word times, and the embedding head with its two
# feature graphs and their licence when the full bundle has one
MOBILE_FILES = frozenset({"encoder_int8", "phoneme_table", "readme", "speech_embedding_mel", "speech_embedding",
                          "embedding_head", "embedding_notice"})
MOBILE_LOOP_SPEC = "docs/runtime.md"  # where a mobile bundle's run-time loop is specified
LM_FILES = ("model.onnx", "model.int8.onnx", "model.int4.onnx", "tokenizer.json")
LM_WEIGHTS = {"fp32": "model.onnx", "int8": "model.int8.onnx", "int4": "model.int4.onnx"}  # variant -> file
MAX_TEMPLATE_CHARS = 100_000
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """A bundle that is missing, incomplete, tampered with, malformed or of an unknown format."""


class Fields:
    """Typed, range-checked reads of a manifest; each failure is one BundleError naming the field."""

    def __init__(self, doc: Any, where: str):
        self.doc, self.where = doc, where

    def _get(self, path, optional: bool = False):
        node: Any = self.doc
        for part in (path.split(".") if isinstance(path, str) else path):
            if not isinstance(node, dict):
                raise BundleError(f"{self.where}: {path!r} must sit in an object")
            if part not in node:
                if optional:
                    return None
                raise BundleError(f"{self.where}: {path!r} is missing")
            node = node[part]
        return node

    def fail(self, path, why: str):
        name = path if isinstance(path, str) else ".".join(path)  # a path is "a.b" or ("files", "x.onnx")
        raise BundleError(f"{self.where}: {name!r} {why}")

    def obj(self, path, optional: bool = False) -> dict | None:
        v = self._get(path, optional)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            self.fail(path, f"must be an object, got {type(v).__name__}")
        return v

    def only(self, path, known) -> None:
        """Refuse fields of the object at `path` that this heron does not know (a typo is not ignored)."""
        unknown = sorted(set(self.obj(path) or {}) - set(known))
        if unknown:
            self.fail(path, f"has fields this heron does not know: {unknown}")

    def str(self, path, choices=None, optional: bool = False) -> str | None:
        v = self._get(path, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            self.fail(path, f"must be a string, got {type(v).__name__}")
        if choices is not None and v not in choices:
            self.fail(path, f"must be one of {list(choices)}, got {v!r}")
        return v

    def _number(self, path, lo, hi, optional: bool, integer: bool):
        v = self._get(path, optional)
        if v is None and optional:
            return None
        ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok:
            self.fail(path, f"must be {'an integer' if integer else 'a finite number'}, got {v!r}")
        if not lo <= v <= hi:
            self.fail(path, f"must be in [{lo}, {hi}], got {v}")
        return v if integer else float(v)

    def int(self, path, lo: int, hi: int, optional: bool = False) -> int | None:
        return self._number(path, lo, hi, optional, integer=True)

    def float(self, path, lo: float, hi: float, optional: bool = False) -> float | None:
        return self._number(path, lo, hi, optional, integer=False)

    def bool(self, path) -> bool:
        v = self._get(path)
        if not isinstance(v, bool):
            self.fail(path, f"must be true or false, got {v!r}")
        return v

    def str_list(self, path, max_len: int = 4096) -> list[str]:
        v = self._get(path)
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or not 0 < len(v) <= max_len:
            self.fail(path, f"must be a list of 1..{max_len} strings")
        return v

    def int_list(self, path, lo: int, hi: int, max_len: int = 64) -> list[int]:
        v = self._get(path)
        if (not isinstance(v, list) or not 0 < len(v) <= max_len
                or any(isinstance(i, bool) or not isinstance(i, int) or not lo <= i <= hi for i in v)):
            self.fail(path, f"must be a list of 1..{max_len} integers in [{lo}, {hi}], got {v!r}")
        return v

    def shape(self, path) -> tuple[int, ...]:
        v = self._get(path)
        if (not isinstance(v, list) or not 1 <= len(v) <= 6
                or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 65536 for d in v)):
            self.fail(path, f"must be a shape: 1..6 integers in [1, 65536], got {v!r}")
        if math.prod(v) > MAX_STATE_ELEMENTS:
            self.fail(path, f"has {math.prod(v)} elements; at most {MAX_STATE_ELEMENTS} are allowed")
        return tuple(v)


# --- the file table (both bundle kinds) -------------------------------------------------------------

def hash_file(p: Path, size: int) -> str:
    """sha256 of a file's first `size` bytes (never more: a file that grew is not read past its size)."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        left = size
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def tree_files(path: Path, where: str) -> list[Path]:
    """Regular files under a folder (a Core ML .mlpackage), refusing links and special files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            q = Path(dirpath) / name
            if q.is_symlink():
                raise BundleError(f"{where}: {q.relative_to(path.parent)} is a symbolic link; "
                                  "a bundle holds regular files only")
            if name in filenames and not q.is_file():
                raise BundleError(f"{where}: {q.relative_to(path.parent)} is not a regular file")
            if name in filenames:
                out.append(q)
    return sorted(out)


def sha256_path(path: str | Path) -> str:
    """sha256 of a file; for a folder (a Core ML .mlpackage), of its sorted (relative path, file hash) list."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in tree_files(path, str(path)):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_path(f)}\n".encode())
        return h.hexdigest()
    return hash_file(path, path.stat().st_size)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_size(path: str | Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in tree_files(path, str(path))) if path.is_dir() else path.stat().st_size


@dataclass(frozen=True)
class FileEntry:
    """One row of a bundle's file table."""
    path: str  # relative to the bundle folder
    sha256: str  # of the file (of a folder: heron.runtime.manifest.sha256_path)
    bytes: int

    @classmethod
    def of(cls, root: str | Path, rel: str) -> "FileEntry":
        """The row for a file written under `root` (measured now)."""
        p = Path(root) / rel
        return cls(rel, sha256_path(p), path_size(p))

    @classmethod
    def from_dict(cls, f: Fields, key: str) -> "FileEntry":
        f.only(("files", key), ("path", "sha256", "bytes"))  # a tuple path: keys may hold dots (mod8.frontend)
        return cls(f.str(("files", key, "path")), _digest(f, ("files", key, "sha256")),
                   f.int(("files", key, "bytes"), 0, MAX_FILE_BYTES))

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def file_table(root: str | Path, files: dict[str, str]) -> dict[str, FileEntry]:
    """{key: path written under root} -> the file table (sha256 and size of each, measured now)."""
    return {k: FileEntry.of(root, rel) for k, rel in files.items()}


def _digest(f: Fields, path, what: str = "") -> str:
    """A sha256 field: 64 lower-case hex digits."""
    v = f.str(path)
    if not _HEX64.fullmatch(v):
        f.fail(path, f"must be {what or 'a sha256'} (64 lower-case hex digits)")
    return v


def read_files(f: Fields) -> dict[str, FileEntry]:
    table = f.obj("files")
    if not table:
        f.fail("files", "lists no files")
    return {key: FileEntry.from_dict(f, key) for key in table}


def files_dict(files: dict[str, FileEntry]) -> dict:
    return {k: e.to_dict() for k, e in files.items()}


def document_fields(m: Any, where: str, known) -> Fields:
    """A manifest's top level: a JSON object that holds only fields this heron knows."""
    if not isinstance(m, dict):
        raise BundleError(f"{where}: a manifest must be a JSON object")
    unknown = sorted(set(m) - set(known))
    if unknown:
        raise BundleError(f"{where}: has fields this heron does not know: {unknown}")
    return Fields(m, where)


# --- keyword-spotting bundles ------------------------------------------------------------------------

@dataclass(frozen=True)
class Features:
    """How the encoder graph turns audio into features (it computes them itself; recorded for readers)."""
    n_fft: int
    hop: int
    n_mels: int
    f_min: float
    f_max: float
    type: str = FEATURES_TYPE
    window: str = "hann"

    def to_dict(self) -> dict:
        return {"type": self.type, "n_fft": self.n_fft, "hop": self.hop, "n_mels": self.n_mels,
                "f_min": self.f_min, "f_max": self.f_max, "window": self.window}


@dataclass(frozen=True)
class EncoderIO:
    """The encoder graph's interface: input shapes (audio and state), outputs, and each state's next value."""
    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    state_pairs: dict[str, str]  # state input -> the output that becomes its next value

    @property
    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: s for n, s in self.inputs.items() if n != "audio_chunk"}

    def to_dict(self) -> dict:
        return {"inputs": {n: list(s) for n, s in self.inputs.items()}, "outputs": list(self.outputs),
                "state_pairs": dict(self.state_pairs)}


RAW_NOT_KEYWORD = -5.0  # nats per phoneme: a path this far below the frames' best classes is not the keyword


@dataclass(frozen=True)
class Calibration:
    """Raw keyword score -> confidence: logistic(slope * z + offset + per_phoneme * n [+ verifier * logit(p)])."""
    slope: float
    offset: float
    per_phoneme: float
    threshold: float  # the default detection threshold on the confidence
    znorm: bool  # fitted on Z-normed scores (the bundle has its background bank) or raw ones
    verifier: float | None = None  # the second stage's weight (required with a verifier)
    min_first_stage: float | None = None  # below this first-stage score the verifier is not consulted
    fitted_on: str | None = None  # provenance

    FIELDS = ("slope", "offset", "per_phoneme", "threshold", "fitted_on", "verifier", "min_first_stage", "znorm")

    @classmethod
    def from_dict(cls, section: Any, where: str) -> "Calibration":
        """The manifest's `calibration` section, checked: BundleError otherwise."""
        f = Fields({"calibration": section}, where)
        f.only("calibration", cls.FIELDS)
        return cls(f.float("calibration.slope", 1e-3, 100.0), f.float("calibration.offset", -50.0, 50.0),
                   f.float("calibration.per_phoneme", -10.0, 10.0), f.float("calibration.threshold", 1e-3, 0.999),
                   f.bool("calibration.znorm"), f.float("calibration.verifier", -100.0, 100.0, optional=True),
                   f.float("calibration.min_first_stage", 0.0, 1.0, optional=True),
                   f.str("calibration.fitted_on", optional=True))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.FIELDS}
        return {k: v for k, v in d.items() if v is not None}

    def problem(self) -> str | None:
        """Why a spotter with this calibration would never fire or fire on everything, or None."""
        if self.znorm:
            return fire_range_problem(self.slope, self.offset, self.per_phoneme, self.threshold)
        return raw_fire_problem(self.slope, self.offset, self.per_phoneme, self.threshold)


def _logistic(x: float) -> float:
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, x))))


def fire_range_problem(slope: float, offset: float, per_phoneme: float, threshold: float) -> str | None:
    """With a Z-norm bank, z is a keyword's score in standard deviations of its scores on background
    speech: at z = 0 (typical background) the confidence must stay under the threshold, or the spotter
    fires on everything; at z = 6 (far above anything background speech scores) it must pass, or it
    never fires. Both for the shortest and the longest keywords. -> what is wrong, or None."""
    for n in (1, MAX_KEYWORD_PHONEMES):
        for z, fires in ((0.0, False), (6.0, True)):
            p = _logistic(slope * z + offset + per_phoneme * n)
            if (p >= threshold) != fires:
                return (f"{'never fires' if fires else 'fires on average background speech'}: confidence {p:.3f} "
                        f"at z = {z:g} for a {n}-phoneme keyword, threshold {threshold} (slope {slope}, offset "
                        f"{offset}, per_phoneme {per_phoneme})")
    return None


def raw_fire_problem(slope: float, offset: float, per_phoneme: float, threshold: float) -> str | None:
    """Without Z-norm the calibrated score is a logistic of the per-phoneme log-likelihood ratio z <= 0. A
    path at z = -5 (each phoneme 5 nats below what the encoder hears: silence, noise, other words) must
    stay under the threshold for keywords of every length, or the spotter fires on everything."""
    for n in (1, MAX_KEYWORD_PHONEMES):
        p = _logistic(slope * RAW_NOT_KEYWORD + offset + per_phoneme * n)
        if p >= threshold:
            return (f"fires on anything: confidence {p:.3f} at a per-phoneme log-likelihood ratio of "
                    f"{RAW_NOT_KEYWORD:g} for a {n}-phoneme keyword, threshold {threshold} (slope {slope}, offset "
                    f"{offset}, per_phoneme {per_phoneme})")
    return None


@dataclass(frozen=True)
class Verifier:
    """The second stage (audio-text matcher) around a first-stage detection."""
    max_frames: int  # the matcher's longest input
    margin_frames: int  # frames kept on each side of the first stage's path
    min_first_stage: float  # below this first-stage score the first stage rejects alone

    def to_dict(self) -> dict:
        return {"max_frames": self.max_frames, "margin_frames": self.margin_frames,
                "min_first_stage": self.min_first_stage}


@dataclass(frozen=True)
class HeadCheck:
    """The embedding head's check of first-stage candidates (files speech_embedding_mel, speech_embedding,
    embedding_head). A candidate is a frame whose first-stage confidence reaches min_confidence; the head
    scores the keyword on the audio around the chunk's candidates, and a candidate's first-stage score s
    becomes s * exp(weight * (log h - offset)) before Z-norm and calibration, h being the head's per-phoneme
    score (offset: a typical log h of a spoken keyword, so that one keeps about its first-stage score).
    Every other frame gets the lowest factor the head can give (h at the score floor): it ranks below every
    candidate and cannot fire."""
    weight: float
    min_confidence: float  # first-stage confidence (calibrated, 0..1) from which the head is asked
    offset: float  # nats per phoneme: the head's log score that leaves a candidate's score as it was
    before_s: float  # audio before a candidate's first-stage start in the head's window (which runs to the
    #                  stream's latest audio)

    FILES = ("speech_embedding_mel", "speech_embedding", "embedding_head")
    RANGES = {"weight": (0.0, 10.0), "min_confidence": (0.0, 1.0), "offset": (-50.0, 0.0),
              "before_s": (0.0, 5.0)}

    @classmethod
    def from_dict(cls, section: Any, where: str) -> "HeadCheck":
        f = Fields({"embedding_head": section}, where)
        f.only("embedding_head", cls.RANGES)
        return cls(**{k: f.float(f"embedding_head.{k}", lo, hi) for k, (lo, hi) in cls.RANGES.items()})

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.RANGES}


@dataclass(frozen=True)
class Mobile:
    """A device bundle (heron kws export --mobile): keywords come from keyword files, not enrollment."""
    made_from: str  # the identity of the full bundle it was made from (its keyword files carry that)
    loop: str = MOBILE_LOOP_SPEC

    def to_dict(self) -> dict:
        return {"made_from": self.made_from, "loop": self.loop}


@dataclass(frozen=True)
class KwsManifest:
    """manifest.json of a keyword-spotting bundle."""
    target: str  # onnx or coreml
    heron_version: str
    sample_rate: int
    chunk_samples: int  # audio samples per encoder call
    frame_seconds: float  # seconds per encoder output frame
    frames_per_chunk: int
    features: Features
    classes: tuple[str, ...]  # the CTC classes by index: what the encoder's log_probs columns mean
    blank: int
    layers: int  # conformer layers (each with GATE_NAMES modules)
    encoder: EncoderIO
    calibration: Calibration
    matcher: MatcherOptions
    files: dict[str, FileEntry]
    model: dict = field(default_factory=dict)  # provenance (training step, checkpoint format)
    speech_gate: GatePolicy | None = None  # with files.speech_gate
    verifier: Verifier | None = None  # with files.text_encoder and files.matcher
    mobile: Mobile | None = None
    format: str = KWS_FORMAT
    embedding_head: HeadCheck | None = None  # with files speech_embedding_mel, speech_embedding, embedding_head

    TOP = ("format", "target", "heron_version", "sample_rate", "chunk_samples", "frame_seconds", "frames_per_chunk",
           "features", "phonemes", "gates", "encoder", "calibration", "matcher", "speech_gate", "verifier",
           "embedding_head", "model", "mobile", "files")

    def has(self, key: str) -> bool:
        return key in self.files

    @classmethod
    def from_dict(cls, m: Any, where: str) -> "KwsManifest":
        """Every field the keyword-spotting runtime reads: present, typed, in range, consistent."""
        f = document_fields(m, where, cls.TOP)
        fmt = f.str("format", KWS_FORMATS)
        target = f.str("target", ("onnx", "coreml"))
        version = f.str("heron_version")
        sr = f.int("sample_rate", 8000, 48000)
        chunk = f.int("chunk_samples", 160, 10 * sr)
        fs = f.float("frame_seconds", 0.005, 1.0)
        fpc = f.int("frames_per_chunk", 1, 1000)
        if abs(fpc * fs * sr - chunk) > 1:
            f.fail("frames_per_chunk", f"x frame_seconds ({fpc} x {fs}) must span chunk_samples ({chunk} at {sr} Hz)")
        f.only("features", ("type", "n_fft", "hop", "n_mels", "f_min", "f_max", "window"))
        features = Features(f.int("features.n_fft", 16, 8192), f.int("features.hop", 1, 8192),
                            f.int("features.n_mels", 1, 512), f.float("features.f_min", 0.0, sr / 2),
                            f.float("features.f_max", 1.0, sr / 2), f.str("features.type", optional=True) or FEATURES_TYPE,
                            f.str("features.window", optional=True) or "hann")
        f.only("phonemes", ("blank", "classes"))
        classes = f.str_list("phonemes.classes", max_len=1024)
        blank = f.int("phonemes.blank", 0, len(classes) - 1)
        symbols = [c for i, c in enumerate(classes) if i != blank]
        missing = sorted(set(PHONEMES) - set(symbols))
        if missing or len(set(symbols)) != len(symbols):
            f.fail("phonemes.classes", f"must name every phoneme heron's G2P emits once (missing {missing[:5]})")
        if symbols != list(PHONEMES):  # the order is the encoder's output order: a reordered table mislabels every frame
            f.fail("phonemes.classes", "must list heron's phonemes in heron's order (AA, AE, AH, ...; the order the "
                                       "encoder's log_probs columns were trained in)")
        f.only("gates", ("names", "layers", "threshold"))
        if f.str_list("gates.names") != list(GATE_NAMES):
            f.fail("gates.names", f"must be {list(GATE_NAMES)}")
        layers = f.int("gates.layers", 1, 64)
        f.float("gates.threshold", GATE_THRESHOLD, GATE_THRESHOLD)  # the gates were trained to switch at 0.5
        encoder = _encoder_io(f, chunk, layers)
        files = read_files(f)
        mobile = None
        if "mobile" in m:  # a device bundle: keywords come from keyword files, which carry their Z-norm
            f.only("mobile", ("made_from", "loop"))
            made_from = _digest(f, "mobile.made_from", "the sha256 of the bundle it was made from")
            mobile = Mobile(made_from, f.str("mobile.loop", optional=True) or MOBILE_LOOP_SPEC)
            extra = sorted(k for k in files if k not in MOBILE_FILES)
            if extra:
                f.fail("files", f"a mobile bundle holds only {sorted(MOBILE_FILES)}; it lists {extra[:4]}")
        calibration = Calibration.from_dict(f.obj("calibration"), where)
        if mobile is None and calibration.znorm != ("background" in files):
            f.fail("calibration.znorm", "must say whether the bundle has its Z-norm background bank (files.background): "
                                        "the calibration was fitted with or without it")
        problem = calibration.problem()
        if problem:
            f.fail("calibration", problem)
        matcher = MatcherOptions.from_dict(f.obj("matcher"), where)  # every field required: the scores depend on each
        model = f.obj("model")
        if target == "onnx":
            if "encoder" not in files and "encoder_int8" not in files:
                f.fail("files", "must list an encoder (encoder or encoder_int8)")
            for prefix in ("mod.", "mod8."):
                mods = {k[len(prefix):] for k in files if k.startswith(prefix)}
                full = {"frontend", "head"} | {f"layer{i}_{n}" for i in range(layers)
                                               for n in ("gate", "norm") + GATE_NAMES}
                if mods and mods != full:
                    f.fail("files", f"{prefix}* must hold the frontend, head and every module of {layers} layers")
        if ("speech_gate" in files) != ("speech_gate" in m):
            f.fail("speech_gate", "and files.speech_gate come together (the gate's graph and its policy)")
        gate = None
        if "speech_gate" in m:
            gate = GatePolicy.from_dict(m["speech_gate"], where)
            if target == "onnx" and not any(k.startswith("mod") for k in files):
                f.fail("speech_gate", "needs the per-module graphs (files mod.* or mod8.*) it skips")
        if ("text_encoder" in files) != ("matcher" in files):
            f.fail("files", "text_encoder and matcher come together")
        verifier = None
        if "matcher" in files:
            if calibration.verifier is None:
                f.fail("calibration.verifier", "is missing (the verifier's weight: required with a verifier)")
            f.only("verifier", ("max_frames", "margin_frames", "min_first_stage"))
            verifier = Verifier(f.int("verifier.max_frames", 2, 100000), f.int("verifier.margin_frames", 0, 1000),
                                f.float("verifier.min_first_stage", 0.0, 1.0))
        elif "verifier" in m:
            f.fail("verifier", "needs files.text_encoder and files.matcher")
        head = None
        listed = [k for k in HeadCheck.FILES if k in files]
        if listed or "embedding_head" in m:
            if len(listed) != len(HeadCheck.FILES) or "embedding_head" not in m:
                f.fail("embedding_head", f"and files {', '.join(HeadCheck.FILES)} come together (the graphs and "
                                         "how they are used)")
            head = HeadCheck.from_dict(m["embedding_head"], where)
        return cls(target, version, sr, chunk, fs, fpc, features, tuple(classes), blank, layers, encoder, calibration,
                   matcher, files, dict(model), gate, verifier, mobile, fmt, head)

    def to_dict(self) -> dict:
        """manifest.json's content (what `from_dict` reads back)."""
        d = {
            "format": self.format, "target": self.target, "heron_version": self.heron_version,
            "sample_rate": self.sample_rate, "chunk_samples": self.chunk_samples, "frame_seconds": self.frame_seconds,
            "frames_per_chunk": self.frames_per_chunk, "features": self.features.to_dict(),
            "phonemes": {"blank": self.blank, "classes": list(self.classes)},
            "gates": {"names": list(GATE_NAMES), "layers": self.layers, "threshold": GATE_THRESHOLD},
            "encoder": self.encoder.to_dict(), "calibration": self.calibration.to_dict(),
            "matcher": self.matcher.to_dict(),
        }
        if self.speech_gate is not None:
            d["speech_gate"] = self.speech_gate.to_dict()
        if self.verifier is not None:
            d["verifier"] = self.verifier.to_dict()
        if self.embedding_head is not None:
            d["embedding_head"] = self.embedding_head.to_dict()
        d["model"] = dict(self.model)
        if self.mobile is not None:
            d["mobile"] = self.mobile.to_dict()
        d["files"] = files_dict(self.files)
        return d


def _encoder_io(f: Fields, chunk: int, layers: int) -> EncoderIO:
    f.only("encoder", ("inputs", "outputs", "state_pairs"))
    inputs = f.obj("encoder.inputs")
    if f.shape("encoder.inputs.audio_chunk") != (1, chunk):
        f.fail("encoder.inputs.audio_chunk", f"must be [1, {chunk}] (chunk_samples)")
    shapes = {name: f.shape(("encoder", "inputs", name)) for name in inputs}
    want = {"cached_audio"} | {f"cached_{k}_{i}" for i in range(layers) for k in ("key", "value", "valid", "conv")}
    if set(inputs) - {"audio_chunk"} != want:
        f.fail("encoder.inputs", f"must hold audio_chunk and the states of {layers} layers (gates.layers)")
    outputs = f.str_list("encoder.outputs")
    pairs = f.obj("encoder.state_pairs")
    if set(pairs) != want or any(not isinstance(v, str) or v not in outputs for v in pairs.values()):
        f.fail("encoder.state_pairs", "must map every state input to one of encoder.outputs")
    if not {"log_probs", "embeddings", "gate_probs"} <= set(outputs):
        f.fail("encoder.outputs", "must include log_probs, embeddings and gate_probs")
    return EncoderIO(shapes, tuple(outputs), dict(pairs))


# --- language-model bundles --------------------------------------------------------------------------

@dataclass(frozen=True)
class LMManifest:
    """manifest.json of a language-model bundle (onnxruntime graphs with KV state pairs)."""
    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    files: dict[str, FileEntry]  # keys: LM_FILES
    state_inputs: tuple[str, ...]
    state_outputs: tuple[str, ...]
    n_experts: int | None = None  # MoE models: experts per layer (null: dense)
    active_experts: int | None = None  # the graph's experts per token
    eot_id: int | None = None  # the end-of-text token (null: none)
    end_ids: tuple[int, ...] | None = None  # every end-of-turn id (a chat model may have several)
    default_weights: str | None = None  # the variant loaded by default (LM_WEIGHTS key)
    chat_template: str | None = None  # instruction-tuned models carry their template
    source: dict = field(default_factory=dict)  # provenance
    format: str = LM_FORMAT

    TOP = ("format", "name", "n_layers", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len", "active_experts",
           "n_experts", "eot_id", "end_ids", "default_weights", "chat_template", "state_inputs", "state_outputs",
           "source", "files", "sha256", "bytes")

    def has(self, file: str) -> bool:
        return file in self.files

    @property
    def stop_ids(self) -> frozenset[int]:
        """Generation stops at any of these."""
        ends = self.end_ids if self.end_ids is not None else (() if self.eot_id is None else (self.eot_id,))
        return frozenset(ends)

    @classmethod
    def from_dict(cls, m: Any, where: str) -> "LMManifest":
        """Every field the onnxruntime LM backend reads: present, typed, in range, consistent. Reads format /1
        (separate sha256 and bytes tables) into the file table."""
        if not isinstance(m, dict):
            raise BundleError(f"{where}: a manifest must be a JSON object")
        fmt = Fields(m, where).str("format", LM_FORMATS)
        f = document_fields(m, where, set(cls.TOP) - ({"sha256", "bytes"} if fmt == LM_FORMAT else {"files"}))
        name = f.str("name")
        layers = f.int("n_layers", 1, 1024)
        kv, hd = f.int("n_kv_heads", 1, 1024), f.int("head_dim", 1, 4096)
        vocab = f.int("vocab_size", 2, 1_000_000)
        max_len = f.int("max_seq_len", 1, 1 << 20)
        for key in ("n_experts", "active_experts", "eot_id"):  # null is a value (dense model, no end token)
            if key not in m:
                f.fail(key, "is missing (null is allowed)")
        experts = f.int("n_experts", 0, 4096, optional=True)
        active = None
        if m.get("active_experts") is not None or experts:
            active = f.int("active_experts", 1, max(1, experts or 0))
        eot = f.int("eot_id", 0, vocab - 1) if m.get("eot_id") is not None else None
        ends = tuple(f.int_list("end_ids", 0, vocab - 1)) if "end_ids" in m else None
        default = f.str("default_weights", tuple(LM_WEIGHTS)) if "default_weights" in m else None
        template = None
        if m.get("chat_template") is not None:
            template = f.str("chat_template")
            if len(template) > MAX_TEMPLATE_CHARS:
                f.fail("chat_template", f"is longer than {MAX_TEMPLATE_CHARS} characters")
        states = []
        for key in ("state_inputs", "state_outputs"):
            states.append(tuple(f.str_list(key)))
            if len(states[-1]) != 2 * layers:
                f.fail(key, f"must name {2 * layers} states (key and value of {layers} layers)")
        source = f.obj("source")
        if fmt == LM_FORMAT_V1:
            files = _v1_files(f)
        else:
            files = read_files(f)
        if not set(files) <= set(LM_FILES) or any(e.path != k for k, e in files.items()):
            f.fail("files", f"must list files among {list(LM_FILES)}, each at its own name")
        if default is not None and LM_WEIGHTS[default] not in files:
            f.fail("default_weights", f"names {default}, whose file {LM_WEIGHTS[default]} the bundle does not list")
        return cls(name, layers, kv, hd, vocab, max_len, files, states[0], states[1], experts, active, eot, ends,
                   default, template, dict(source), fmt)

    def to_dict(self) -> dict:
        d = {"format": self.format, "name": self.name, "n_layers": self.n_layers, "n_kv_heads": self.n_kv_heads,
             "head_dim": self.head_dim, "vocab_size": self.vocab_size, "max_seq_len": self.max_seq_len,
             "active_experts": self.active_experts, "n_experts": self.n_experts, "eot_id": self.eot_id}
        if self.end_ids is not None:
            d["end_ids"] = list(self.end_ids)
        if self.default_weights is not None:
            d["default_weights"] = self.default_weights
        if self.chat_template is not None:
            d["chat_template"] = self.chat_template
        d.update({"state_inputs": list(self.state_inputs), "state_outputs": list(self.state_outputs),
                  "source": dict(self.source)})
        if self.format == LM_FORMAT_V1:  # an old bundle's manifest, as it was
            d["sha256"] = {k: e.sha256 for k, e in self.files.items()}
            d["bytes"] = {k: e.bytes for k, e in self.files.items()}
        else:
            d["files"] = files_dict(self.files)
        return d


def _v1_files(f: Fields) -> dict[str, FileEntry]:
    sha, size = f.obj("sha256"), f.obj("bytes")
    if set(sha) != set(size) or not set(sha) <= set(LM_FILES):
        f.fail("sha256", f"and 'bytes' must list the same files, among {list(LM_FILES)}")
    out = {}
    for name in sha:
        out[name] = FileEntry(name, _digest(f, ("sha256", name)), f.int(("bytes", name), 0, MAX_FILE_BYTES))
    return out


@dataclass(frozen=True)
class LMCoreMLManifest:
    """manifest.json of a Core ML language-model bundle (model.mlpackage with KV states, tokenizer.json)."""
    n_layers: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    inputs: tuple[str, ...]  # the package's input names (tokens, ...)
    outputs: tuple[str, ...]  # its output names (logits, ...)
    states: tuple[str, ...]  # its state names (the KV cache lives in the model: iOS 18 states)
    files: dict[str, FileEntry]
    active_experts: int | None = None
    eot_id: int | None = None
    minimum_deployment_target: str = "iOS18"
    source: dict = field(default_factory=dict)
    format: str = LM_COREML_FORMAT

    FIELDS = ("format", "n_layers", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len", "active_experts", "eot_id",
              "minimum_deployment_target", "inputs", "outputs", "states", "source", "files")

    @classmethod
    def from_dict(cls, m: Any, where: str) -> "LMCoreMLManifest":
        f = document_fields(m, where, cls.FIELDS)
        fmt = f.str("format", (LM_COREML_FORMAT,))
        vocab = f.int("vocab_size", 2, 1_000_000)
        files = read_files(f)
        if "model" not in files:
            f.fail("files", "must list the model (model.mlpackage)")
        active = f.int("active_experts", 1, 4096) if m.get("active_experts") is not None else None
        eot = f.int("eot_id", 0, vocab - 1) if m.get("eot_id") is not None else None
        return cls(f.int("n_layers", 1, 1024), f.int("n_kv_heads", 1, 1024), f.int("head_dim", 1, 4096), vocab,
                   f.int("max_seq_len", 1, 1 << 20), tuple(f.str_list("inputs")), tuple(f.str_list("outputs")),
                   tuple(f.str_list("states")), files, active, eot, f.str("minimum_deployment_target"),
                   dict(f.obj("source")), fmt)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.FIELDS}
        d.update(inputs=list(self.inputs), outputs=list(self.outputs), states=list(self.states),
                 source=dict(self.source), files=files_dict(self.files))
        return d
