"""Writing weight files: one helper, so every checkpoint, release and adapter gets the same file mode.

`safetensors.torch.save_file` leaves its file readable by its owner only (0600); a checkpoint or a
release is shared like any other file the user writes, so it gets the mode the user's umask gives new
files (usually 0644).
"""
from __future__ import annotations

import os
from pathlib import Path


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path
