"""heron.runtime.gguf: a numpy-only GGUF reader. Bit-exact with the `gguf` package's reference
dequantizers on SmolLM2's file and on files written by gguf's own writer; truncated or edited files
are one GGUFError line."""
import numpy as np
import pytest

from heron.runtime.gguf import GGUFError, GGUFFile

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A small GGUF file of every supported type and every metadata kind, written by the gguf package."""
    path = tmp_path_factory.mktemp("gguf") / "t.gguf"
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("t.u32", 7)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héron")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.strs", ["a", "bc", ""])
    Q = gguf.GGMLQuantizationType
    arrays = {}
    for name, qtype, shape in [("f32", Q.F32, (3, 64)), ("f16", Q.F16, (2, 32)), ("q8", Q.Q8_0, (4, 64)),
                               ("q40", Q.Q4_0, (2, 96)), ("q41", Q.Q4_1, (5, 32)), ("bf16", Q.BF16, (2, 32))]:
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32:
            data = x
        elif qtype == Q.F16:
            data = x.astype(np.float16)
        else:
            data = gguf.quants.quantize(x, qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
        arrays[name] = (qtype, shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, arrays


def test_metadata_and_tensors_match_the_gguf_package(written):
    path, arrays = written
    f = GGUFFile(path)
    assert f.metadata["t.u32"] == 7 and f.metadata["t.f32"] == 0.5 and f.metadata["t.bool"] is True
    assert f.metadata["t.str"] == "héron" and f.metadata["t.ints"] == [1, 2, 3] and f.metadata["t.strs"] == ["a", "bc", ""]
    assert f.metadata["general.architecture"] == "llama"
    ref = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for name, (qtype, shape) in arrays.items():
        got = f.tensor(name)
        want = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type).astype(np.float32).reshape(shape)
        assert got.shape == shape and got.dtype == np.float32 and np.array_equal(got, want), name


def test_smollm2_weights_are_bit_exact():
    from heron.paths import named_lm_path

    try:
        path = named_lm_path("smollm2")
    except (FileNotFoundError, ValueError) as e:
        pytest.skip(str(e))
    f = GGUFFile(path)
    reader = gguf.GGUFReader(str(path))
    assert f.metadata["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents()
    assert f.metadata["llama.block_count"] == 30
    picked = [t for t in reader.tensors if t.name in ("token_embd.weight", "blk.0.attn_q.weight",
                                                      "blk.29.ffn_down.weight", "output_norm.weight")]
    assert {t.tensor_type.name for t in picked} == {"Q8_0", "Q4_1", "F32"}
    for t in picked:
        want = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        assert np.array_equal(f.tensor(t.name), want), t.name


def test_truncated_or_edited_files_are_one_line_errors(written, tmp_path):
    path, _ = written
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    f = GGUFFile(path)
    last = max(t.offset + t.nbytes for t in f.tensors.values())
    for cut in sorted({4, 8, 23, 30, 60, 200, f.data_start - 1, last - 1}):
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError):
            GGUFFile(bad)
    edits = {0: b"GGUX", 4: (9).to_bytes(4, "little"), 8: (1 << 40).to_bytes(8, "little"),
             16: (1 << 40).to_bytes(8, "little")}
    for at, raw in edits.items():
        bad.write_bytes(data[:at] + raw + data[at + len(raw):])
        with pytest.raises(GGUFError) as e:
            GGUFFile(bad)
        assert "\n" not in str(e.value)
    # a tensor offset pointing past the end of the file
    info_end = f.data_start
    off_pos = data.rfind((f.tensors["bf16"].offset - f.data_start).to_bytes(8, "little"), 0, info_end)
    bad.write_bytes(data[:off_pos] + (1 << 30).to_bytes(8, "little") + data[off_pos + 8:])
    with pytest.raises(GGUFError, match="outside the file"):
        GGUFFile(bad)
    with pytest.raises(KeyError, match="no tensor"):
        f.tensor("missing")
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "none.gguf")
