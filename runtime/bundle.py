"""Loading a heron model bundle: manifest.json + files, every file's sha256 verified before use."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_FORMATS = ("heron-kws-bundle/1",)
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "kws"
BUNDLE_ENV = "HERON_BUNDLE"  # names another default bundle (e.g. to grade a new model with unchanged tools)


class BundleError(ValueError):
    """A bundle that is missing, incomplete, tampered with or of an unknown format."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    def path(self, key: str) -> Path:
        try:
            return self.root / self.manifest["files"][key]["path"]
        except KeyError:
            raise BundleError(f"bundle {self.root} has no file {key!r}; it has {sorted(self.manifest['files'])}") from None

    def has(self, key: str) -> bool:
        return key in self.manifest.get("files", {})


def sha256_path(path: str | Path) -> str:
    """sha256 of a file; for a folder (a Core ML .mlpackage), of its sorted (relative path, file hash) list."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_path(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_bundle(root: str | Path | None = None) -> Bundle:
    """Read and verify a bundle folder (default: $HERON_BUNDLE, else the one shipped with heron)."""
    import os

    root = Path(root) if root is not None else Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"no manifest.json in {root}: not a heron bundle (export one with `heron export`)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") not in SUPPORTED_FORMATS:
        raise BundleError(f"{mpath}: unsupported bundle format {manifest.get('format') if isinstance(manifest, dict) else None!r};"
                          f" this heron reads {SUPPORTED_FORMATS}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{mpath} lists no files")
    for key, info in files.items():
        p = root / info["path"]
        if Path(info["path"]).is_absolute() or ".." in Path(info["path"]).parts:
            raise BundleError(f"{mpath}: file {key} points outside the bundle ({info['path']})")
        if not p.exists():
            raise BundleError(f"bundle {root} is incomplete: {info['path']} is missing")
        if sha256_path(p) != info["sha256"]:
            raise BundleError(f"bundle {root}: {info['path']} does not match its sha256 (corrupt or tampered)")
    return Bundle(root, manifest)
