"""Loading a heron model bundle: manifest.json + files, all of it checked before anything is used.

A bundle is a folder: `manifest.json` (its schema: heron.runtime.manifest), `manifest.sha256` (the
sha256 of manifest.json itself, the bundle's identity, shown by `heron doctor` and `heron kws export`)
and the files its file table lists. Loading refuses, with one line, a bundle whose manifest was edited,
whose fields are missing, of the wrong type or out of range, whose files are missing, changed, of another
size, symbolic links or outside the bundle folder. Nothing is read past a file's declared size.

The identity and file checks here serve both bundle kinds (keyword spotting here, language models in
runtime/lm.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from heron.runtime.manifest import (IDENTITY, MANIFEST, MAX_FILE_BYTES, MAX_MANIFEST_BYTES, BundleError, FileEntry,
                                    KWS_FORMATS, KwsManifest, hash_file, path_size, sha256_path)

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "kws"
BUNDLE_ENV = "HERON_BUNDLE"  # names another default bundle (e.g. to grade a new model with unchanged tools)

__all__ = ["Bundle", "BundleError", "DEFAULT_BUNDLE", "IDENTITY", "MANIFEST", "load_bundle", "path_size",
           "read_manifest", "sha256_path", "verify_file", "verify_files", "write_identity", "write_manifest"]


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
        digest = hash_file(p, actual)
    if digest != sha256:
        raise BundleError(f"bundle {root}: {rel} does not match its sha256 (corrupt or tampered)")
    return p


def write_identity(root: str | Path) -> str:
    """Record the manifest's own sha256 beside it (`manifest.sha256`); returns it. Exporters call this last."""
    root = Path(root)
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    (root / IDENTITY).write_text(digest + "\n")
    return digest


# how each kind of bundle is made (read_manifest's hint when a folder holds none)
HOW_TO_MAKE = {"keyword-spotting": "`heron kws export`", "language-model": "`heron lm export`",
               "draft-head": "`scripts/train_draft_head.py --export DIR --out OUT`"}


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
        raise BundleError(f"no {MANIFEST} in {root}: not a heron {kind} bundle (make one with "
                          f"{HOW_TO_MAKE.get(kind, '`heron kws export`')})")
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
    """A verified keyword-spotting bundle: its folder, its checked manifest and its identity."""
    root: Path
    manifest: KwsManifest
    identity: str = ""  # sha256 of manifest.json

    def path(self, key: str) -> Path:
        if key not in self.manifest.files:
            raise BundleError(f"bundle {self.root} has no file {key!r}; it has {sorted(self.manifest.files)}")
        return self.root / self.manifest.files[key].path

    def has(self, key: str) -> bool:
        return key in self.manifest.files


def verify_files(root: Path, files: dict[str, FileEntry], where: str) -> None:
    """Every file of a manifest's file table: inside the bundle, regular, of its size, matching its sha256."""
    for entry in files.values():
        verify_file(root, entry.path, entry.sha256, entry.bytes, where)


def write_manifest(root: str | Path, manifest) -> str:
    """Write a manifest (KwsManifest or LMManifest) as manifest.json, checked by reading it back first, and its
    identity beside it; returns the identity. Exporters call this last."""
    root = Path(root)
    doc = manifest.to_dict()
    type(manifest).from_dict(doc, str(root / MANIFEST))  # what is written reads back, or nothing is written
    (root / MANIFEST).write_text(json.dumps(doc, indent=1, allow_nan=False))
    return write_identity(root)


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


def load_bundle(root: str | Path | None = None, sha256: str | None = None) -> Bundle:
    """Read and verify a bundle folder (default: $HERON_BUNDLE, else the one shipped with heron, whose
    identity is pinned). sha256: the identity (manifest.sha256) the bundle must have."""
    root = Path(root) if root is not None else Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)
    expected, what = expected_identity(root, DEFAULT_BUNDLE, "kws", sha256)
    manifest, identity = read_manifest(root, "keyword-spotting")
    check_identity(root, identity, expected, what)
    where = str(root / MANIFEST)
    if manifest.get("format") not in KWS_FORMATS:
        raise BundleError(f"{where}: unsupported bundle format {manifest.get('format')!r}; this heron reads "
                          f"{KWS_FORMATS}")
    checked = KwsManifest.from_dict(manifest, where)
    verify_files(root, checked.files, where)
    return Bundle(root, checked, identity)
