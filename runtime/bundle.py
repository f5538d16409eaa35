"""Loading a heron model bundle: manifest.json + files, all of it checked before anything is used.

A bundle is a folder: `manifest.json` (what the runtime needs to know: sample rate, chunk size,
state shapes, calibration, the files with their sha256 and size), `manifest.sha256` (the sha256 of
manifest.json itself, the bundle's identity, shown by `heron doctor` and `heron kws export`) and the
files. Loading refuses, with one line, a bundle whose manifest was edited, whose fields are missing,
of the wrong type or out of range, whose files are missing, changed, of another size, symbolic links
or outside the bundle folder. Nothing is read past a file's declared size.

The field checks (`Fields`) are shared with the LM bundle loader (runtime/lm.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.runtime.ctc_kws import MatcherOptions
from heron.runtime.phonemes import MAX_KEYWORD_PHONEMES, PHONEMES
from heron.runtime.speech_gate import GatePolicy

KWS_FORMAT = "heron-kws-bundle/1"  # what export writes
SUPPORTED_FORMATS = (KWS_FORMAT,)  # what the runtime reads
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "kws"
BUNDLE_ENV = "HERON_BUNDLE"  # names another default bundle (e.g. to grade a new model with unchanged tools)
MANIFEST, IDENTITY = "manifest.json", "manifest.sha256"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 32
MAX_STATE_ELEMENTS = 1 << 22  # one state tensor; the shipped encoder's largest holds 4,096
GATE_NAMES = ("ffn1", "attn", "conv", "ffn2")
GATE_THRESHOLD = 0.5  # a module runs when its gate probability is above this (heron.models.conformer trains it so)
MOBILE_FILES = frozenset({"encoder_int8", "phoneme_table", "readme"})  # what a device needs (heron kws export --mobile)
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

    def obj(self, path: str, optional: bool = False) -> dict | None:
        v = self._get(path, optional)
        if v is None and optional:
            return None
        if not isinstance(v, dict):
            self.fail(path, f"must be an object, got {type(v).__name__}")
        return v

    def str(self, path: str, choices=None, optional: bool = False) -> str | None:
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

    def int(self, path: str, lo: int, hi: int, optional: bool = False) -> int | None:
        return self._number(path, lo, hi, optional, integer=True)

    def float(self, path: str, lo: float, hi: float, optional: bool = False) -> float | None:
        return self._number(path, lo, hi, optional, integer=False)

    def bool(self, path) -> bool:
        v = self._get(path)
        if not isinstance(v, bool):
            self.fail(path, f"must be true or false, got {v!r}")
        return v

    def str_list(self, path: str, max_len: int = 4096) -> list[str]:
        v = self._get(path)
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v) or not 0 < len(v) <= max_len:
            self.fail(path, f"must be a list of 1..{max_len} strings")
        return v

    def int_list(self, path: str, lo: int, hi: int, max_len: int = 64) -> list[int]:
        v = self._get(path)
        if (not isinstance(v, list) or not 0 < len(v) <= max_len
                or any(isinstance(i, bool) or not isinstance(i, int) or not lo <= i <= hi for i in v)):
            self.fail(path, f"must be a list of 1..{max_len} integers in [{lo}, {hi}], got {v!r}")
        return v

    def shape(self, path: str) -> tuple[int, ...]:
        v = self._get(path)
        if (not isinstance(v, list) or not 1 <= len(v) <= 6
                or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 65536 for d in v)):
            self.fail(path, f"must be a shape: 1..6 integers in [1, 65536], got {v!r}")
        if math.prod(v) > MAX_STATE_ELEMENTS:
            self.fail(path, f"has {math.prod(v)} elements; at most {MAX_STATE_ELEMENTS} are allowed")
        return tuple(v)


def _inside(root: Path, rel: str, where: str) -> Path:
    """A path named by a manifest -> its location, refusing absolute paths, '..', and any symbolic
    link between the bundle root and the file (a link could point anywhere, /dev/zero included)."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BundleError(f"{where}: {rel!r} points outside the bundle")
    p = root
    for part in parts:
        p = p / part
        if p.is_symlink():
            raise BundleError(f"{where}: {rel!r} is a symbolic link; a bundle holds regular files only")
    return p


def _hash_file(p: Path, size: int) -> str:
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


def _tree_files(path: Path, where: str) -> list[Path]:
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
        for f in _tree_files(path, str(path)):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_path(f)}\n".encode())
        return h.hexdigest()
    return _hash_file(path, path.stat().st_size)


def path_size(path: str | Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in _tree_files(path, str(path))) if path.is_dir() else path.stat().st_size


def verify_file(root: Path, rel: str, sha256: str, size: int | None, where: str) -> Path:
    """Check one file a manifest lists: inside the bundle, regular, of its declared size, matching
    its sha256. Reads at most the declared size."""
    p = _inside(root, rel, where)
    if not p.exists():
        raise BundleError(f"bundle {root} is incomplete: {rel} is missing")
    if p.is_dir():
        if path_size(p) != size and size is not None:
            raise BundleError(f"bundle {root}: {rel} is {path_size(p)} bytes, the manifest says {size}")
        digest = sha256_path(p)
    else:
        if not p.is_file():
            raise BundleError(f"{where}: {rel} is not a regular file")
        actual = p.stat().st_size
        if size is not None and actual != size:
            raise BundleError(f"bundle {root}: {rel} is {actual} bytes, the manifest says {size} (corrupt or tampered)")
        if actual > MAX_FILE_BYTES:
            raise BundleError(f"bundle {root}: {rel} is {actual} bytes; at most {MAX_FILE_BYTES} are read")
        digest = _hash_file(p, actual)
    if digest != sha256:
        raise BundleError(f"bundle {root}: {rel} does not match its sha256 (corrupt or tampered)")
    return p


def write_identity(root: str | Path) -> str:
    """Record the manifest's own sha256 beside it (`manifest.sha256`); returns it. Exporters call this last."""
    root = Path(root)
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    (root / IDENTITY).write_text(digest + "\n")
    return digest


def read_manifest(root: str | Path, kind: str) -> tuple[dict, str]:
    """manifest.json of a bundle folder, checked against manifest.sha256 -> (manifest, identity)."""
    root = Path(root)
    mpath, ipath = root / MANIFEST, root / IDENTITY
    if not root.exists():
        raise BundleError(f"no {MANIFEST} at {root}: no such folder (a heron {kind} bundle is a folder)")
    if not root.is_dir():
        raise BundleError(f"{root} is a file: a heron {kind} bundle is a folder with a {MANIFEST}")
    for p in (mpath, ipath):
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise BundleError(f"{p} is not a regular file")
    if not mpath.is_file():
        raise BundleError(f"no {MANIFEST} in {root}: not a heron {kind} bundle (export one with `heron kws export`)")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is over {MAX_MANIFEST_BYTES} bytes: not a heron manifest")
    raw = mpath.read_bytes()
    if not ipath.is_file():
        raise BundleError(f"{root} has no {IDENTITY} (the manifest's checksum); re-export the bundle with this heron")
    recorded = ipath.read_text(errors="replace")[:200].strip()
    identity = hashlib.sha256(raw).hexdigest()
    if recorded != identity:
        raise BundleError(f"{mpath} was changed after export: its sha256 {identity[:16]}... does not match "
                          f"{IDENTITY} ({recorded[:16]}...)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from None
    except RecursionError:
        raise BundleError(f"{mpath} is not a manifest: its JSON is nested too deeply") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object")
    return manifest, identity


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict
    identity: str = ""  # sha256 of manifest.json

    def path(self, key: str) -> Path:
        try:
            return self.root / self.manifest["files"][key]["path"]
        except KeyError:
            raise BundleError(f"bundle {self.root} has no file {key!r}; it has {sorted(self.manifest['files'])}") from None

    def has(self, key: str) -> bool:
        return key in self.manifest.get("files", {})


def validate_kws_manifest(m: dict, where: str) -> None:
    """Every field the keyword-spotting runtime reads: present, typed, in range, consistent."""
    f = Fields(m, where)
    f.str("format", SUPPORTED_FORMATS)
    target = f.str("target", ("onnx", "coreml"))
    f.str("heron_version")
    sr = f.int("sample_rate", 8000, 48000)
    chunk = f.int("chunk_samples", 160, 10 * sr)
    fs = f.float("frame_seconds", 0.005, 1.0)
    fpc = f.int("frames_per_chunk", 1, 1000)
    if abs(fpc * fs * sr - chunk) > 1:
        f.fail("frames_per_chunk", f"x frame_seconds ({fpc} x {fs}) must span chunk_samples ({chunk} at {sr} Hz)")
    f.obj("features")
    f.int("features.n_fft", 16, 8192), f.int("features.hop", 1, 8192), f.int("features.n_mels", 1, 512)
    f.float("features.f_min", 0.0, sr / 2), f.float("features.f_max", 1.0, sr / 2)
    classes = f.str_list("phonemes.classes", max_len=1024)
    blank = f.int("phonemes.blank", 0, len(classes) - 1)
    symbols = [c for i, c in enumerate(classes) if i != blank]
    missing = sorted(set(PHONEMES) - set(symbols))
    if missing or len(set(symbols)) != len(symbols):
        f.fail("phonemes.classes", f"must name every phoneme heron's G2P emits once (missing {missing[:5]})")
    if symbols != list(PHONEMES):  # the order is the encoder's output order: a reordered table mislabels every frame
        f.fail("phonemes.classes", "must list heron's phonemes in heron's order (AA, AE, AH, ...; the order the "
                                   "encoder's log_probs columns were trained in)")
    if f.str_list("gates.names") != list(GATE_NAMES):
        f.fail("gates.names", f"must be {list(GATE_NAMES)}")
    layers = f.int("gates.layers", 1, 64)
    f.float("gates.threshold", GATE_THRESHOLD, GATE_THRESHOLD)  # the gates were trained to switch at 0.5
    inputs = f.obj("encoder.inputs")
    if f.shape("encoder.inputs.audio_chunk") != (1, chunk):
        f.fail("encoder.inputs.audio_chunk", f"must be [1, {chunk}] (chunk_samples)")
    for name in inputs:
        f.shape(f"encoder.inputs.{name}")
    want = {"cached_audio"} | {f"cached_{k}_{i}" for i in range(layers) for k in ("key", "value", "valid", "conv")}
    if set(inputs) - {"audio_chunk"} != want:
        f.fail("encoder.inputs", f"must hold audio_chunk and the states of {layers} layers (gates.layers)")
    outputs = f.str_list("encoder.outputs")
    pairs = f.obj("encoder.state_pairs")
    if set(pairs) != want or any(not isinstance(v, str) or v not in outputs for v in pairs.values()):
        f.fail("encoder.state_pairs", "must map every state input to one of encoder.outputs")
    if not {"log_probs", "embeddings", "gate_probs"} <= set(outputs):
        f.fail("encoder.outputs", "must include log_probs, embeddings and gate_probs")
    slope = f.float("calibration.slope", 1e-3, 100.0)
    offset = f.float("calibration.offset", -50.0, 50.0)
    per_ph = f.float("calibration.per_phoneme", -10.0, 10.0)
    threshold = f.float("calibration.threshold", 1e-3, 0.999)
    f.float("calibration.verifier", -100.0, 100.0, optional=True)
    f.float("calibration.min_first_stage", 0.0, 1.0, optional=True)
    f.str("calibration.fitted_on", optional=True)
    files = f.obj("files")
    mobile = "mobile" in m  # a device bundle: keywords come from keyword files, which carry their Z-norm
    if mobile:
        if not _HEX64.fullmatch(f.str("mobile.made_from")):
            f.fail("mobile.made_from", "must be the sha256 (64 lower-case hex digits) of the bundle it was made from")
        extra = sorted(k for k in files if k not in MOBILE_FILES)
        if extra:
            f.fail("files", f"a mobile bundle holds only {sorted(MOBILE_FILES)}; it lists {extra[:4]}")
    znorm = f.bool("calibration.znorm")
    if not mobile and znorm != (isinstance(files, dict) and "background" in files):
        f.fail("calibration.znorm", "must say whether the bundle has its Z-norm background bank (files.background): "
                                    "the calibration was fitted with or without it")
    problem = fire_range_problem(slope, offset, per_ph, threshold) if znorm else \
        raw_fire_problem(slope, offset, per_ph, threshold)
    if problem:
        f.fail("calibration", problem)
    MatcherOptions.from_dict(f.obj("matcher"), where)  # every field required: the scores depend on each
    f.obj("model")
    if not files:
        f.fail("files", "lists no files")
    for key in files:
        f.obj(("files", key))
        f.str(("files", key, "path"))
        if not _HEX64.fullmatch(f.str(("files", key, "sha256"))):
            f.fail(("files", key, "sha256"), "must be 64 lower-case hex digits")
        f.int(("files", key, "bytes"), 0, MAX_FILE_BYTES)
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
    if "speech_gate" in m:
        GatePolicy.from_dict(m["speech_gate"], where)
        if target == "onnx" and not any(k.startswith("mod") for k in files):
            f.fail("speech_gate", "needs the per-module graphs (files mod.* or mod8.*) it skips")
    if ("text_encoder" in files) != ("matcher" in files):
        f.fail("files", "text_encoder and matcher come together")
    if "matcher" in files:
        f.float("calibration.verifier", -100.0, 100.0)  # the verifier's weight: required with a verifier
        f.int("verifier.max_frames", 2, 100000)
        f.int("verifier.margin_frames", 0, 1000)
        f.float("verifier.min_first_stage", 0.0, 1.0)


def expected_identity(root: Path, shipped_root: Path, name: str, sha256: str | None) -> tuple[str | None, str]:
    """The identity a bundle must have -> (sha256 or None, what it is): the caller's, else the pinned one of
    a shipped bundle (heron.runtime.pinned), else none."""
    from heron.runtime.pinned import SHIPPED

    if sha256 is not None:
        if not isinstance(sha256, str) or len(sha256.strip()) != 64 or not all(c in "0123456789abcdef" for c in
                                                                              sha256.strip().lower()):
            raise ValueError(f"sha256 must be 64 hex digits (a bundle's manifest.sha256), got {sha256!r}")
        return sha256.strip().lower(), "the expected identity"
    if root.resolve() == shipped_root.resolve():
        return SHIPPED[name], "the identity pinned for heron's shipped bundle"
    return None, ""


def check_identity(root: Path, identity: str, expected: str | None, what: str) -> None:
    if expected is not None and identity != expected:
        raise BundleError(f"{root}: manifest sha256 {identity} is not {what} {expected}: the bundle was edited "
                          "or replaced")


def fire_range_problem(slope: float, offset: float, per_phoneme: float, threshold: float) -> str | None:
    """With a Z-norm bank, z is a keyword's score in standard deviations of its scores on background
    speech: at z = 0 (typical background) the confidence must stay under the threshold, or the spotter
    fires on everything; at z = 6 (far above anything background speech scores) it must pass, or it
    never fires. Both for the shortest and the longest keywords. -> what is wrong, or None."""
    for n in (1, MAX_KEYWORD_PHONEMES):
        for z, fires in ((0.0, False), (6.0, True)):
            p = 1 / (1 + math.exp(-max(-60.0, min(60.0, slope * z + offset + per_phoneme * n))))
            if (p >= threshold) != fires:
                return (f"{'never fires' if fires else 'fires on average background speech'}: confidence {p:.3f} "
                        f"at z = {z:g} for a {n}-phoneme keyword, threshold {threshold} (slope {slope}, offset "
                        f"{offset}, per_phoneme {per_phoneme})")
    return None


RAW_NOT_KEYWORD = -5.0  # nats per phoneme: a path this far below the frames' best classes is not the keyword


def raw_fire_problem(slope: float, offset: float, per_phoneme: float, threshold: float) -> str | None:
    """Without Z-norm the calibrated score is a logistic of the per-phoneme log-likelihood ratio z <= 0. A
    path at z = -5 (each phoneme 5 nats below what the encoder hears: silence, noise, other words) must
    stay under the threshold for keywords of every length, or the spotter fires on everything."""
    for n in (1, MAX_KEYWORD_PHONEMES):
        p = 1 / (1 + math.exp(-max(-60.0, min(60.0, slope * RAW_NOT_KEYWORD + offset + per_phoneme * n))))
        if p >= threshold:
            return (f"fires on anything: confidence {p:.3f} at a per-phoneme log-likelihood ratio of "
                    f"{RAW_NOT_KEYWORD:g} for a {n}-phoneme keyword, threshold {threshold} (slope {slope}, offset "
                    f"{offset}, per_phoneme {per_phoneme})")
    return None


def load_bundle(root: str | Path | None = None, sha256: str | None = None) -> Bundle:
    """Read and verify a bundle folder (default: $HERON_BUNDLE, else the one shipped with heron, whose
    identity is pinned). sha256: the identity (manifest.sha256) the bundle must have."""
    root = Path(root) if root is not None else Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)
    expected, what = expected_identity(root, DEFAULT_BUNDLE, "kws", sha256)
    manifest, identity = read_manifest(root, "keyword-spotting")
    check_identity(root, identity, expected, what)
    where = str(root / MANIFEST)
    if manifest.get("format") not in SUPPORTED_FORMATS:
        raise BundleError(f"{where}: unsupported bundle format {manifest.get('format')!r}; this heron reads "
                          f"{SUPPORTED_FORMATS}")
    validate_kws_manifest(manifest, where)
    for key, info in manifest["files"].items():
        verify_file(root, info["path"], info["sha256"], info["bytes"], where)
    return Bundle(root, manifest, identity)
