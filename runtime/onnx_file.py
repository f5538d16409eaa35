"""Named initializers of an ONNX file read with numpy alone (no `onnx` package): a bounds-checked walk over the
protobuf wire format down to ModelProto.graph.initializer, memory-mapped, so a 100 MB graph costs only the
tensors asked for. A draft head takes its output rows from its target this way (heron.runtime.draft_head).

Wire format: each field is a varint key (field number << 3 | wire type) and its value: 0 varint, 1 eight
bytes, 2 a varint length and that many bytes (messages, strings, bytes, packed lists), 5 four bytes.
ModelProto.graph is field 7; GraphProto.initializer field 5; in a TensorProto dims is 1, data_type 2,
name 8, raw_data 9, data_location 14 (1: the data is in another file, which this reader refuses).
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

# ONNX TensorProto.DataType -> numpy (the types heron's graphs store initializers in)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
T_DIMS, T_TYPE, T_NAME, T_RAW, T_LOCATION = 1, 2, 8, 9, 14
MAX_DIMS = 8
EXTERNAL = 1  # TensorProto.DataLocation


class OnnxFileError(ValueError):
    """An ONNX file (or one of its initializers) that cannot be read as asked: says what and where."""


def _varint(buf, pos: int, end: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFileError(f"{where}: a truncated or malformed protobuf field")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int, where: str):
    """(field number, wire type, value or (start, end) of a length-delimited value) of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end, where)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end, where)
        elif wire == 2:
            n, pos = _varint(buf, pos, end, where)
            if n > end - pos:
                raise OnnxFileError(f"{where}: a field of {n} bytes runs past its message")
            value, pos = (pos, pos + n), pos + n
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
            if pos > end:
                raise OnnxFileError(f"{where}: a truncated protobuf field")
        else:
            raise OnnxFileError(f"{where}: protobuf wire type {wire} is not ONNX's")
        yield field, wire, value


def _tensor(buf, start: int, end: int, where: str) -> tuple[str, list[int], int, tuple[int, int] | None, int]:
    name, dims, dtype, raw, location = "", [], 0, None, 0
    for field, wire, value in _fields(buf, start, end, where):
        if field == T_NAME and wire == 2:
            name = bytes(buf[value[0]:value[1]]).decode("utf-8", "replace")
        elif field == T_DIMS and wire == 0:
            dims.append(value)
        elif field == T_DIMS and wire == 2:  # packed
            pos = value[0]
            while pos < value[1]:
                d, pos = _varint(buf, pos, value[1], where)
                dims.append(d)
        elif field == T_TYPE and wire == 0:
            dtype = value
        elif field == T_RAW and wire == 2:
            raw = value
        elif field == T_LOCATION and wire == 0:
            location = value
    return name, dims, dtype, raw, location


def base_name(name: str) -> str:
    """heron's graph builders number their initializers ("token_embd.q_18"): the name without that number."""
    stem, _, tail = name.rpartition("_")
    return stem if stem and tail.isdigit() else name


def _initializers(buf, where: str):
    """(name, dims, data type, raw data span or None, data location) of every initializer of a ModelProto."""
    for field, wire, value in _fields(buf, 0, len(buf), where):
        if field != MODEL_GRAPH or wire != 2:
            continue
        for gfield, gwire, gvalue in _fields(buf, value[0], value[1], where):
            if gfield == GRAPH_INITIALIZER and gwire == 2:
                yield _tensor(buf, gvalue[0], gvalue[1], where)


def read_initializers(path: str | Path, names: set[str] | list[str]) -> dict[str, np.ndarray]:
    """The initializers of the ONNX file at `path` named `names` (each as given or numbered, "name_18"), as numpy
    arrays (copies; the file is closed after), or one OnnxFileError line: a name that is not there or is there
    twice, data in another file, a size that disagrees with the shape, a malformed file."""
    path, want = Path(path), set(names)
    where = str(path)
    if path.stat().st_size == 0:
        raise OnnxFileError(f"{where}: an empty file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            return _find(buf, want, where)
        finally:
            buf.release()


def initializers_in(graph: bytes, names: set[str] | list[str], where: str) -> dict[str, np.ndarray]:
    """read_initializers over a serialized ModelProto already in memory (the bytes a bundle check verified)."""
    return _find(memoryview(graph), set(names), where)


def _find(buf, want: set[str], where: str) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for name, dims, dtype, raw, location in _initializers(buf, where):
        key = name if name in want else base_name(name)
        if key not in want:
            continue
        if key in found:
            raise OnnxFileError(f"{where}: more than one initializer is named {key}")
        found[key] = _array(buf, name, dims, dtype, raw, location, where)
    missing = sorted(want - set(found))
    if missing:
        raise OnnxFileError(f"{where}: no initializer {', '.join(missing)} in this graph")
    return found


def initializer_names(graph: bytes, where: str) -> set[str]:
    """The names of a serialized ModelProto's initializers, numbering dropped (base_name)."""
    return {base_name(name) for name, *_ in _initializers(memoryview(graph), where)}


def external_initializers(graph: bytes, where: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of every initializer of a serialized ModelProto whose data is not in it (onnxruntime would
    look for it in another file unless the caller supplies it)."""
    return {name: tuple(dims) for name, dims, _, raw, location in _initializers(memoryview(graph), where)
            if location == EXTERNAL}


def _array(buf, name: str, dims: list[int], dtype: int, raw, location: int, where: str) -> np.ndarray:
    if location == EXTERNAL or raw is None:
        raise OnnxFileError(f"{where}: the initializer {name} is not stored in the file as raw data")
    if dtype not in DTYPES:
        raise OnnxFileError(f"{where}: the initializer {name} has ONNX data type {dtype}; this reader takes "
                            f"{sorted(DTYPES)}")
    if len(dims) > MAX_DIMS:
        raise OnnxFileError(f"{where}: the initializer {name} has {len(dims)} dimensions")
    dt = np.dtype(DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if count * dt.itemsize != raw[1] - raw[0]:
        raise OnnxFileError(f"{where}: the initializer {name} holds {raw[1] - raw[0]} bytes; its shape {dims} "
                            f"needs {count * dt.itemsize}")
    return np.frombuffer(buf[raw[0]:raw[1]], dt).astype(DTYPES[dtype]).reshape(dims)
