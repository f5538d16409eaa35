"""The on-device path (heron, heron.runtime) must not pull in torch or other training code."""
import subprocess
import sys


def _modules_after(stmt: str) -> set[str]:
    code = f"{stmt}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_heron_and_runtime_do_not_import_torch():
    mods = _modules_after("import heron, heron.runtime, heron.runtime.phonemes, heron.runtime.metrics, heron.cli")
    assert "torch" not in mods
    assert not any(m.startswith("heron.models") or m.startswith("heron.export") for m in mods)


def test_cli_parser_builds_without_torch():
    mods = _modules_after("from heron.cli import build_parser; build_parser()")
    assert "torch" not in mods


def test_the_check_can_see_torch():
    # guard against a check that can never fail: importing torch does show up
    assert "torch" in _modules_after("import torch")


# --- the house's import rules, checked on the source (ast): directions, no cycles, no privates --------

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "heron.runtime", "models": "heron.models", "export": "heron.export", "sdk": "heron"}
HEAVY = ("torch", "coremltools", "onnx", "onnxscript", "transformers")
# which layers a layer may import: models <- export; runtime <- sdk <- demos (sdk reaches models and
# export only inside functions, for the verbs that need torch)
ALLOWED = {"runtime": {"runtime"}, "models": {"runtime", "models"}, "export": {"runtime", "models", "export"},
           "sdk": {"runtime", "sdk"}, "demos": {"sdk"}}
LAZY_OK = {"sdk": {"models", "export"}}


def _layer(module: str) -> str:
    for folder, pkg in FOLDERS.items():
        if folder != "sdk" and (module == pkg or module.startswith(pkg + ".")):
            return folder
    return "sdk" if module == "heron" or module.startswith("heron.") else ""


def _sources(folders=("runtime", "models", "export", "sdk", "demos")):
    for folder in folders:
        for f in sorted((REPO / folder).rglob("*.py")):
            rel = f.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if folder == "demos":
                name = "demos." + ".".join(parts)
            else:
                name = ".".join([FOLDERS[folder], *parts]) if parts else FOLDERS[folder]
            yield folder, name, f


def _imports(path: Path):
    """(module, names, module_level, lineno) for every import statement in a file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], id(node) in top, node.lineno, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", [a.name for a in node.names], id(node) in top, node.lineno, node.level


def house_violations(folders=("runtime", "models", "export", "sdk", "demos")) -> list[str]:
    bad, graph = [], {}
    for layer, name, path in _sources(folders):
        graph.setdefault(name, set())
        for mod, names, top, line, level in _imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if level:
                bad.append(f"{where}: relative import (use absolute heron. imports)")
                continue
            root = mod.split(".")[0]
            if root in HEAVY and (layer == "runtime" or (layer == "sdk" and top)):
                bad.append(f"{where}: {layer}/ imports {mod}" + ("" if layer == "runtime" else " at module level"))
            if root != "heron" or mod == "heron" and layer == "demos":
                continue
            target = _layer(mod)
            if target not in ALLOWED[layer] and not (not top and target in LAZY_OK.get(layer, ())):
                bad.append(f"{where}: {layer}/ imports {mod} ({target}/)")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and mod != name:
                bad.append(f"{where}: imports private {private} from {mod}")
            if top:
                graph[name].add(mod)
    # cycles among module-level imports
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            if m not in graph:
                continue
            if state.get(m) == 1:
                bad.append("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return bad


def test_import_directions_cycles_and_privates():
    assert house_violations() == []


def test_the_house_check_can_fail(tmp_path, monkeypatch):
    """Each rule catches a planted violation (a check that cannot fail is no check)."""
    planted = {"runtime/x_bad.py": "import torch\nfrom heron.models.conformer import BLANK\n",
               "sdk/x_bad.py": "import torch\nfrom heron.runtime.spotter import _check_graph\nfrom . import cli\n",
               "models/x_a.py": "from heron.models.x_b import y\n", "models/x_b.py": "from heron.models.x_a import y\n",
               "demos/x_bad.py": "from heron.runtime.bundle import load_bundle\n"}
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = "\n".join(house_violations())
    for needle in ("runtime/ imports torch", "runtime/ imports heron.models.conformer", "sdk/ imports torch at module",
                   "private ['_check_graph']", "relative import", "import cycle", "demos/ imports heron.runtime"):
        assert needle in found, (needle, found)
