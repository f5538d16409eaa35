"""Where the shipped models live: package data of heron.models (a checkout and an installed wheel alike)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def models_dir() -> Path:
    """The heron.models package folder, found without importing it (it needs torch)."""
    return Path(importlib.util.find_spec("heron.models").submodule_search_locations[0])


def default_lm_path() -> Path:
    return models_dir() / "weights" / "lm-nano"


def default_kws_checkpoint() -> Path:
    return models_dir() / "weights" / "kws-base"
