"""Language-model backends for decoding: the interface and the onnxruntime implementation.

A backend owns a KV cache and returns next-token logits for a block of tokens appended to it:

    logits = backend.forward([t1, t2, t3])   # (3, V) float32; the cache grows by 3
    backend.trim(2)                          # drop the last 2 positions (rejected draft tokens)
    state = backend.snapshot(); backend.restore(state)   # cheap branch points (Mirror-SD rollouts)

The onnxruntime backend is heron's "NPU" path: any execution provider the installed onnxruntime offers
(CPU, CoreML, QNN, ...) can run the draft. numpy + onnxruntime only; no torch here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

ONNX_FORMAT = "heron-lm-onnx/1"
DEFAULT_DRAFT = Path(__file__).resolve().parent / "assets" / "lm-draft"  # the shipped draft bundle


@dataclass
class Token:
    """One generated token, as streaming generation yields it."""
    id: int
    text: str = ""              # the new text this token completes ("" inside a multi-byte character)
    position: int = 0           # index in the whole sequence (prompt included)
    from_draft: bool = False    # proposed by a draft (or MTP/Mirror branch) and accepted by the target


class LMBackend(Protocol):
    name: str
    vocab_size: int
    max_len: int

    @property
    def length(self) -> int: ...
    def forward(self, tokens: Sequence[int]) -> np.ndarray: ...
    def trim(self, n: int) -> None: ...
    def reset(self) -> None: ...
    def snapshot(self): ...
    def restore(self, state) -> None: ...


def available_providers() -> list[str]:
    import onnxruntime as ort
    return ort.get_available_providers()


class OnnxLM:
    """A heron LM exported by `heron export --lm` run with onnxruntime."""

    branchable = True  # snapshots are independent (state arrays are never written in place)

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int = 1, int8: bool = False, verify: bool = True):
        import onnxruntime as ort
        folder = Path(folder)
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{folder} is not an LM bundle (no manifest.json)")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath} is not valid JSON: {e}") from e
        if self.manifest.get("format") != ONNX_FORMAT:
            raise ValueError(f"{mpath}: expected format {ONNX_FORMAT!r}, got {self.manifest.get('format')!r}")
        name = "model.int8.onnx" if int8 else "model.onnx"
        if name not in self.manifest.get("sha256", {}):
            raise ValueError(f"{folder}: the manifest lists no {name} (int8 variants come from heron export --lm-int8)")
        if verify:
            for f, digest in self.manifest["sha256"].items():
                p = (folder / f).resolve()
                if folder.resolve() not in p.parents:
                    raise ValueError(f"manifest names a file outside the bundle: {f}")
                if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != digest:
                    raise ValueError(f"{p} is missing or does not match its checksum (tampered or incomplete bundle)")
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ValueError(f"onnxruntime here offers {ort.get_available_providers()}, not {unknown}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / name), so, providers=list(providers))
        m = self.manifest
        self.name = f"onnxruntime[{','.join(p.replace('ExecutionProvider', '') for p in providers)}]"
        self.vocab_size, self.max_len = m["vocab_size"], m["max_seq_len"]
        self.eot_id = m.get("eot_id")
        self.state_in, self.state_out = m["state_inputs"], m["state_outputs"]
        self._empty = np.zeros((1, m["n_kv_heads"], 0, m["head_dim"]), np.float32)
        self.folder = folder
        self.reset()

    @property
    def length(self) -> int:
        return self._state[0].shape[2]

    def reset(self) -> None:
        self._state = [self._empty] * len(self.state_in)

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        if len(tokens) == 0:
            raise ValueError("empty token block")
        if self.length + len(tokens) > self.max_len:
            raise ValueError(f"{self.length + len(tokens)} positions exceed the context of {self.max_len}")
        feed = {"tokens": np.asarray([tokens], dtype=np.int64), **dict(zip(self.state_in, self._state))}
        out = self.session.run(None, feed)
        self._state = out[1:]
        return out[0][0]

    def trim(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot trim {n} positions from a cache holding {self.length}")
        keep = self.length - n
        self._state = [s[:, :, :keep] for s in self._state]  # views: trimming copies nothing

    def snapshot(self):
        return list(self._state)  # the arrays are never written in place, so references suffice

    def restore(self, state) -> None:
        self._state = list(state)


def load_tokenizer(path: str | Path):
    """The bundle's tokenizer (the `tokenizers` package)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("LM generation needs the 'tokenizers' package: pip install tokenizers") from e
    return Tokenizer.from_file(str(path))


class Detokenizer:
    """Turns a growing id list into text increments without splitting a UTF-8 character."""

    def __init__(self, decode, prompt_ids: list[int]):
        self.decode, self.ids = decode, list(prompt_ids)
        self.emitted = len(decode(self.ids)) if decode else 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.decode is None:
            return ""
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # incomplete multi-byte character: wait for the next token
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new
