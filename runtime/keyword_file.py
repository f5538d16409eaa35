"""Keyword files: one keyword enrolled on a computer, loaded by a device that cannot enroll.

Enrollment needs the pronunciation dictionary, G2P and the bundle's Z-norm background bank; a phone,
a web page or a microcontroller has none of them. `heron kws enroll TEXT --out F.kw` writes what the
run time needs for one keyword, and `KeywordSpotter.add_keyword_file(F)` (Python) or the JavaScript
runtime (`runtime/js/heron.mjs`) load it. docs/runtime.md specifies how each field is used.

The format (`heron-keyword/1`) is two lines of UTF-8 JSON, language-neutral and checksummed:

    {"format": "heron-keyword/1", "sha256": "<sha256 of the second line's bytes>"}
    {"format": "heron-keyword/1", "bundle_sha256": ..., "name": ..., "text": ..., "words": [...],
     "word_phonemes": [[...], ...], "classes": [...], "threshold": ..., "znorm": {"mean": ..., "std": ...},
     "max_frames": ...}

The checksum covers the exact bytes of the second line, so no reader has to re-serialize JSON
(floats print differently in Python and JavaScript). `bundle_sha256` is the identity (manifest.sha256)
of the bundle the keyword was enrolled with; a mobile bundle made from it names it in
`mobile.made_from`, so a keyword file works with both and with nothing else.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from heron.runtime.phonemes import MAX_KEYWORD_PHONEMES, MAX_KEYWORD_WORDS

FORMAT = "heron-keyword/1"
MAX_BYTES = 64 * 1024  # a keyword file is a few hundred bytes; anything near this is not one
_HEX64 = re.compile(r"[0-9a-f]{64}")


class KeywordFileError(ValueError):
    """A keyword file that is not one, was edited or truncated, or was made for another bundle."""


@dataclass(frozen=True)
class KeywordFile:
    """A keyword file's contents, checked (`read_keyword_file`) or about to be written."""

    bundle_sha256: str
    name: str
    text: str
    words: tuple[str, ...]
    word_phonemes: tuple[tuple[str, ...], ...]
    classes: tuple[int, ...]  # CTC class ids in the bundle's class table (no blank)
    threshold: float  # calibrated confidence at which the keyword fires
    znorm: tuple[float, float] | None  # (mean, std) of the log first-stage score on background speech
    max_frames: int  # the longest a keyword path may last, in encoder frames

    def body(self) -> dict:
        return {"format": FORMAT, "bundle_sha256": self.bundle_sha256, "name": self.name, "text": self.text,
                "words": list(self.words), "word_phonemes": [list(w) for w in self.word_phonemes],
                "classes": list(self.classes), "threshold": self.threshold,
                "znorm": None if self.znorm is None else {"mean": self.znorm[0], "std": self.znorm[1]},
                "max_frames": self.max_frames}


def encode_keyword_file(kf: KeywordFile) -> bytes:
    """The file's bytes: the header line (format, sha256 of the body line) and the body line."""
    body = json.dumps(kf.body(), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    header = json.dumps({"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest()}, separators=(",", ":"))
    return header.encode("utf-8") + b"\n" + body + b"\n"


def write_keyword_file(kf: KeywordFile, path: str | Path) -> Path:
    """Write atomically (a temporary file renamed over the target): a crash never leaves half a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; a keyword file is one file (e.g. {path / 'keyword.kw'})")
    data = encode_keyword_file(kf)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _fail(where: str, why: str) -> KeywordFileError:
    return KeywordFileError(f"{where}: {why}")


def parse_keyword_file(data: bytes, where: str) -> KeywordFile:
    """Bytes of a keyword file -> its checked contents (format, checksum, types and ranges). Whether it
    fits a bundle is `check_for_bundle`'s job."""
    if len(data) > MAX_BYTES:
        raise _fail(where, f"{len(data)} bytes is too large for a keyword file (at most {MAX_BYTES})")
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2] != b"":
        raise _fail(where, "not a heron keyword file (two JSON lines expected; truncated or edited?)")
    try:
        header = json.loads(lines[0].decode("utf-8"))
        body = json.loads(lines[1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _fail(where, "not a heron keyword file (its lines are not JSON; truncated or edited?)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        raise _fail(where, f"unsupported keyword file format {got!r}; this heron reads {FORMAT!r}")
    if header.get("sha256") != hashlib.sha256(lines[1]).hexdigest():
        raise _fail(where, "checksum mismatch: the keyword file was edited or corrupted (enroll it again)")
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _fail(where, "the body's format is not " + FORMAT)

    def need(key, kind):
        v = body.get(key)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise _fail(where, f"field {key!r} must be a {kind.__name__ if isinstance(kind, type) else 'number'}")
        return v

    sha = need("bundle_sha256", str)
    if not _HEX64.fullmatch(sha):
        raise _fail(where, "bundle_sha256 must be 64 lower-case hex digits")
    name, text = need("name", str), need("text", str)
    if not name.strip() or len(name) > 200 or len(text) > 200:
        raise _fail(where, "name and text must be non-empty strings of at most 200 characters")
    words, wph, classes = need("words", list), need("word_phonemes", list), need("classes", list)
    if not 1 <= len(words) <= MAX_KEYWORD_WORDS or len(wph) != len(words):
        raise _fail(where, f"words: 1..{MAX_KEYWORD_WORDS}, one phoneme list per word")
    if not all(isinstance(w, str) and 0 < len(w) <= 64 for w in words):
        raise _fail(where, "words must be non-empty strings")
    if not all(isinstance(p, list) and p and all(isinstance(s, str) and 0 < len(s) <= 4 for s in p) for p in wph):
        raise _fail(where, "word_phonemes must be lists of phoneme symbols")
    n = sum(len(p) for p in wph)
    if not 1 <= len(classes) <= MAX_KEYWORD_PHONEMES or len(classes) != n:
        raise _fail(where, f"classes: one id per phoneme ({n}), at most {MAX_KEYWORD_PHONEMES}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1024 for c in classes):
        raise _fail(where, "classes must be integer class ids")
    threshold = need("threshold", (int, float))
    if not 1e-3 <= threshold <= 0.999:
        raise _fail(where, f"threshold {threshold} is outside [0.001, 0.999]")
    zn = body.get("znorm")
    znorm = None
    if zn is not None:
        if not isinstance(zn, dict) or set(zn) != {"mean", "std"} or not all(
                isinstance(zn[k], (int, float)) and not isinstance(zn[k], bool) and math.isfinite(zn[k]) for k in zn):
            raise _fail(where, "znorm must be null or {mean, std} (finite numbers)")
        if not -200.0 <= zn["mean"] <= 0.0 or not 0.05 <= zn["std"] <= 100.0:
            raise _fail(where, f"znorm (mean {zn['mean']}, std {zn['std']}) is outside what background speech gives "
                               "(mean in [-200, 0], std in [0.05, 100])")
        znorm = (float(zn["mean"]), float(zn["std"]))
    max_frames = need("max_frames", int)
    return KeywordFile(sha, name, text, tuple(words), tuple(tuple(p) for p in wph), tuple(classes),
                       float(threshold), znorm, max_frames)


def read_keyword_file(path: str | Path) -> KeywordFile:
    """Read and check a keyword file (size first: a huge file is refused before it is read)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise KeywordFileError(f"{where}: no such keyword file")
    if path.stat().st_size > MAX_BYTES:
        raise _fail(where, f"{path.stat().st_size} bytes is too large for a keyword file (at most {MAX_BYTES})")
    return parse_keyword_file(path.read_bytes(), where)


def check_for_bundle(kf: KeywordFile, where: str, identities: tuple[str, ...], class_table: tuple[str, ...],
                     blank: int, frames_base: int, frames_per_phoneme: int, znorm: bool) -> None:
    """Does the keyword file fit this bundle? Its identity, its phonemes' class ids, its path bound and
    whether it carries the Z-norm statistics the bundle's calibration was fitted with."""
    if kf.bundle_sha256 not in identities:
        raise _fail(where, f"made for another bundle (sha256 {kf.bundle_sha256[:16]}...; this bundle is "
                           f"{identities[0][:16]}...): enroll it again with this bundle")
    of = {c: i for i, c in enumerate(class_table) if i != blank}
    flat = [p for w in kf.word_phonemes for p in w]
    if any(p not in of for p in flat) or [of[p] for p in flat] != list(kf.classes):
        raise _fail(where, "its classes do not spell its phonemes in this bundle's class table")
    want = frames_base + frames_per_phoneme * len(kf.classes)
    if kf.max_frames != want:
        raise _fail(where, f"max_frames {kf.max_frames} is not this bundle's rule ({want} for {len(kf.classes)} phonemes)")
    if znorm != (kf.znorm is not None):
        raise _fail(where, "its Z-norm statistics do not match the bundle's calibration (enroll it again with this bundle)")
