"""heron.runtime.onnx_file reads named initializers of an ONNX file with numpy alone: the arrays onnx itself
reads, by their name or numbered ("name_18"); a missing, doubled, external or truncated one is one error line."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from heron.runtime.onnx_file import OnnxFileError, base_name, external_initializers, read_initializers  # noqa: E402


def _model(inits):
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_reads_what_onnx_reads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"table.q_18": rng.integers(0, 256, (5, 2, 32)).astype(np.uint8),
              "table.scales_3": rng.standard_normal((5, 2)).astype(np.float32),
              "ids": np.arange(7, dtype=np.int64), "half": rng.standard_normal(4).astype(np.float16)}
    path = tmp_path / "m.onnx"
    onnx.save_model(_model([numpy_helper.from_array(a, n) for n, a in arrays.items()]), str(path))
    got = read_initializers(path, ["table.q", "table.scales", "ids", "half"])
    for name, a in arrays.items():
        g = got[base_name(name)]
        assert g.dtype == a.dtype and g.shape == a.shape
        np.testing.assert_array_equal(g, a)
    with pytest.raises(OnnxFileError, match="no initializer nope"):
        read_initializers(path, ["ids", "nope"])
    assert base_name("a_b_12") == "a_b" and base_name("a_b") == "a_b" and base_name("_3") == "_3"


def test_bad_files_are_one_line_errors(tmp_path):
    a = np.arange(64, dtype=np.float32)
    twice = tmp_path / "twice.onnx"
    onnx.save_model(_model([numpy_helper.from_array(a, "w_1"), numpy_helper.from_array(a, "w_2")]), str(twice))
    with pytest.raises(OnnxFileError, match="more than one initializer is named w"):
        read_initializers(twice, ["w"])
    ext = numpy_helper.from_array(a, "w")
    ext.ClearField("raw_data")
    ext.data_location = TensorProto.EXTERNAL
    entry = ext.external_data.add()
    entry.key, entry.value = "location", "elsewhere"
    model = _model([ext])
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_initializers(path.read_bytes(), "ext") == {"w": (64,)}
    with pytest.raises(OnnxFileError, match="not stored in the file"):
        read_initializers(path, ["w"])
    good = _model([numpy_helper.from_array(a, "w")]).SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[:-40])
    with pytest.raises(OnnxFileError, match="truncated|past its message|no initializer"):
        read_initializers(cut, ["w"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(OnnxFileError):
        read_initializers(junk, ["w"])
