"""Writing heron LM bundle manifests (torch-free: GGUF exports and in-memory bundles need no torch)."""
from __future__ import annotations

from pathlib import Path

from heron.runtime.bundle import write_manifest as write_checked
from heron.runtime.lm import lm_manifest
from heron.runtime.manifest import file_table


def write_manifest(out: Path, files: list[str], cfg, *, name: str, eot_id: int | None, source: dict | None,
                   active_experts: int | None = None, **extra) -> Path:
    """manifest.json (lm_manifest with the file table of `files`, each at its own name) and its identity, for
    any heron LM bundle. `extra`: end_ids, default_weights, chat_template."""
    manifest = lm_manifest(cfg, name=name, eot_id=eot_id, source=source, active_experts=active_experts,
                           files=file_table(out, {f: f for f in files}), **extra)
    write_checked(out, manifest)
    return out
