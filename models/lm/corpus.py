"""The default training corpus: text that every machine with Python has.

Documentation strings of the standard library (read with `ast`, nothing is imported or executed) and
the pydoc help topics. The order is fixed (sorted module paths, source order inside a file), so the
same Python version gives the same bytes; the held-out split is chosen by a hash of each document's
name, so adding or removing a module never moves other documents between the splits.
"""
from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_PERCENT = 5
MIN_DOC_CHARS = 40
DOC_SEPARATOR = "\n\n"
# Test suites and IDE/GUI demos are mostly boilerplate docstrings ("Test foo."); skip them.
SKIP_PARTS = {"test", "tests", "idlelib", "turtledemo", "__pycache__", "site-packages", "lib2to3"}


@dataclass(frozen=True)
class Document:
    name: str      # "json.decoder.JSONDecoder.decode" or "pydoc:FORMATTING"
    text: str

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha1(self.name.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def _docstrings(path: Path, module: str):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    todo = [(tree, module)]
    while todo:
        node, name = todo.pop(0)
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= MIN_DOC_CHARS:
            yield Document(name, doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                todo.append((child, f"{name}.{child.name}"))


def stdlib_documents() -> list[Document]:
    """Every docstring of at least MIN_DOC_CHARS characters in the standard library, then the pydoc topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[Document] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts) or any(p.startswith("test_") for p in rel.parts):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        docs.extend(_docstrings(path, module))
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings alone still work
        topics = {}
    docs.extend(Document(f"pydoc:{key}", topics[key].strip()) for key in sorted(topics))
    return docs


def text_documents(paths: list[str | Path]) -> list[Document]:
    """User files (--text): each file is split into paragraph documents named file:index."""
    docs = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"--text: no such file: {p}")
        text = p.read_text(encoding="utf-8", errors="replace")
        parts = [t.strip() for t in text.split("\n\n") if t.strip()]
        docs.extend(Document(f"{p.name}:{i}", t) for i, t in enumerate(parts))
    if not docs:
        raise ValueError("--text: the given files hold no text")
    return docs


def split(docs: list[Document]) -> tuple[str, str]:
    """(train text, held-out text), documents joined by DOC_SEPARATOR."""
    if not docs:
        raise ValueError("the corpus has no documents")
    held = [d.held_out for d in docs]
    if not any(held):  # a small user corpus: hold out its last document (or the last tenth of a single
        if len(docs) == 1:  # one), never also training on it, so evaluation still works
            text = docs[0].text
            cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1 or int(len(text) * 0.9)
            return text[:cut], text[cut:]
        held[-1] = True
    train = DOC_SEPARATOR.join(d.text for d, h in zip(docs, held) if not h)
    return train, DOC_SEPARATOR.join(d.text for d, h in zip(docs, held) if h)


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
