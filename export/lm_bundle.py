"""Writing heron LM bundle manifests (torch-free: GGUF exports and in-memory bundles need no torch)."""
from __future__ import annotations

import json
from pathlib import Path

from heron.runtime.bundle import MANIFEST, sha256_path, write_identity
from heron.runtime.lm import lm_manifest


def write_manifest(out: Path, files: list[str], cfg, *, name: str, eot_id: int | None, source: dict | None,
                   active_experts: int | None = None, **extra) -> Path:
    """manifest.json (lm_manifest with the sha256 and size of every file in `files`) and its identity,
    for any heron LM bundle."""
    manifest = lm_manifest(cfg, name=name, eot_id=eot_id, source=source, active_experts=active_experts,
                           sha256={f: sha256_path(out / f) for f in files},
                           sizes={f: (out / f).stat().st_size for f in files}, **extra)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False))
    write_identity(out)
    return out
