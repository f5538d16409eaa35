"""onnxruntime sessions as heron opens them: one place for threads, providers and int8 precision.

int8 graphs (dynamic quantization: uint8 activations x int8 weights) run on onnxruntime's U8S8
kernels. On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) those kernels add pairs of u8 x s8
products in 16 bits and can saturate, so the same bundle scores differently there than on a VNNI
machine or an ARM phone. `session.x64quantprecision=1` makes onnxruntime use its exact U8U8 path (weights are
converted once at load); heron sets it on x86 CPUs without VNNI, so an int8 bundle gives the same
results on every x86 machine without slowing down the VNNI ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

EXACT_INT8 = ("session.x64quantprecision", "1")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def needs_exact_int8(machine: str | None = None, cpu_flags: set[str] | None = None) -> bool:
    """True on x86 CPUs without VNNI, where the default int8 kernels saturate. On VNNI CPUs the
    default kernels are already exact and onnxruntime's U8U8 path only costs time (measured with
    scripts/ab_exact_int8.py: +5-19% encoder time, identical outputs); elsewhere (ARM) the option does nothing. Where the flags cannot be
    read, x86 gets the exact path (correct first)."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if cpu_flags is None:
        from heron.runtime.cpu import cpu_info

        cpu_flags = set(cpu_info()[1])
    return not cpu_flags or not any(v in cpu_flags for v in VNNI_FLAGS)


def session_options(threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if needs_exact_int8():
        opts.add_session_config_entry(*EXACT_INT8)
    return opts


class MemoryFile:
    """A graph serialized into anonymous memory (Linux memfd_create), which onnxruntime opens as a file
    (/proc/self/fd/N): its Python binding copies a graph handed over as bytes several times while it loads it (a
    string, a stream, its own ModelProto: SmolLM2's 119 MB graph took the load near 500 MB), a file it reads once.
    Nothing is written to any file system; close() frees the memory (OnnxLM.from_memory does once loaded).
    write() keeps the sha256 and size of what was written."""

    def __init__(self, name: str = "heron-graph"):
        import hashlib
        import os

        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.size, self._sha = 0, hashlib.sha256()

    @staticmethod
    def supported() -> bool:
        import os
        import sys

        return sys.platform.startswith("linux") and hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir()

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def write(self, data) -> None:
        import os

        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.size += view.nbytes
        while view:
            view = view[os.write(self.fd, view):]

    def sha256(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        import os

        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # one dropped unread still frees its memory
        try:
            self.close()
        except (OSError, AttributeError):
            pass


def open_session(path: str | Path | bytes, threads: int = 1, providers: Sequence[str] | None = None,
                 initializers: dict | None = None, huge_pages: bool = False, where: str | None = None):
    """An onnxruntime session for a verified bundle file (or a graph built in memory, as bytes), or one
    BundleError line for a graph onnxruntime cannot load. initializers: name -> numpy array for the graph's
    initializers marked external (a draft head's rows, taken from its target): onnxruntime uses them as
    constants (weights prepacked as for any other), their shapes checked against the graph's. huge_pages: the
    memory the session's weights were loaded into is backed by huge pages where the system allows
    (heron.runtime.pages; a language model streams its weights every token); session.heron_huge_pages says how
    many bytes. where: what load errors call the graph (default: its path, or "the graph built in memory")."""
    import numpy as np
    import onnxruntime as ort

    from heron.runtime.bundle import BundleError
    from heron.runtime.pages import HugePages

    where = where or ("the graph built in memory" if isinstance(path, bytes) else str(path))
    opts = session_options(threads)
    values = []
    if initializers:
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in initializers.values()]
        opts.add_external_initializers(list(initializers), values)
    try:
        with HugePages(huge_pages) as pages:
            session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                           providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime raises its own (pybind) exception types
        raise BundleError(f"{where}: onnxruntime cannot load this graph: {str(e).splitlines()[0][:300]}") from None
    session.heron_initializers = values  # onnxruntime may read their buffers for the session's whole life
    if isinstance(path, bytes) and list(providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]:
        # onnxruntime's Python session keeps the serialized graph (a model's whole weights, again) to build itself
        # anew if another provider fails; a CPU-only session never does
        session._model_bytes = None
    session.heron_huge_pages = pages.collapsed
    return session


def runner(session):
    """`feeds -> outputs` for a session whose inputs were checked once at load (every output, in the
    graph's order). Calls onnxruntime's compiled session directly: the Python wrapper's per-call checks
    (input names, OrtValue ownership, graph capture) add up when a spotter chunk runs 20-odd small graphs.
    Errors still come from onnxruntime itself; where the compiled session
    is not exposed (another onnxruntime build), the public `run` is used."""
    names = [o.name for o in session.get_outputs()]
    inner = getattr(session, "_sess", None)
    if inner is None or not callable(getattr(inner, "run", None)):
        return lambda feeds: session.run(names, feeds)
    return lambda feeds: inner.run(names, feeds, None)
