"""LM export: the ONNX step graph with KV-cache state equals torch over a multi-step decode (prefill,
single tokens, a verify block, a rollback), int8 stays close, tampered bundles are refused; the Core ML
package has the promised interface; the torch backend's early-exit split equals its plain forward."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from heron.export.onnx_lm import write_bundle  # noqa: E402
from heron.runtime.bundle import write_identity  # noqa: E402
from heron.models.lm.backend import TorchLM  # noqa: E402
from heron.models.lm.model import Transformer, preset  # noqa: E402
from heron.runtime.lm import OnnxLM  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Transformer(preset("tiny", n_layers=2, vocab_size=300, max_seq_len=64)).eval()


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    return write_bundle(model, tmp_path_factory.mktemp("lm"), int8=True)


def _decode_script(backend):
    """prefill 7, 3 single steps, a verify block of 4, roll back 2, 2 more steps -> stacked logits."""
    out = [backend.forward([5, 9, 2, 7, 7, 1, 3])]
    for t in (4, 8, 15):
        out.append(backend.forward([t]))
    out.append(backend.forward([16, 23, 42, 4]))
    backend.trim(2)
    for t in (99, 100):
        out.append(backend.forward([t]))
    return np.concatenate(out), backend.length


def test_onnx_matches_torch_over_multistep_decode(model, bundle):
    ref, n_ref = _decode_script(TorchLM(model))
    got, n_got = _decode_script(OnnxLM(bundle))
    assert n_ref == n_got == 14
    assert np.abs(ref - got).max() < 1e-4
    q, _ = _decode_script(OnnxLM(bundle, int8=True))
    assert (q.argmax(-1) == ref.argmax(-1)).mean() > 0.8
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["state_inputs"][0] == "cached_key_0" and manifest["state_outputs"][0] == "new_cached_key_0"


def test_int8_export_quantizes_the_gathered_experts_too(bundle):
    """An MoE layer's experts are stacked tensors picked by GatherND, not MatMul weights, and the tied head
    reads the embedding through a Transpose: all of them are stored int8 as well (per-row scales), so the
    int8 graph is a fraction of the fp32 one."""
    import onnx

    g = onnx.load(str(bundle / "model.int8.onnx")).graph
    gathered = {n.input[0] for n in g.node if n.op_type in ("GatherND", "Gather")}
    stacks = [i for i in g.initializer if i.name in gathered and len(i.dims) >= 3 and i.dims[-1] > 1]  # not scales
    assert stacks and all(i.data_type == onnx.TensorProto.INT8 for i in stacks)
    assert (bundle / "model.int8.onnx").stat().st_size < 0.5 * (bundle / "model.onnx").stat().st_size
    # the tied head and embedding too: no large fp32 weight is left
    from heron.export.quantize import MIN_GATHERED_ELEMENTS
    big = [i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= MIN_GATHERED_ELEMENTS]
    assert not big, big


def test_snapshots_are_independent_branches(bundle):
    lm = OnnxLM(bundle)
    lm.forward([1, 2, 3])
    snap = lm.snapshot()
    a = lm.forward([4, 5])
    lm.restore(snap)
    lm.forward([7])
    lm.restore(snap)
    assert np.array_equal(lm.forward([4, 5]), a)


def test_tampered_or_bad_bundles_are_refused(model, bundle, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256|checksum"):
        OnnxLM(bad)
    unlisted = tmp_path / "unlisted"  # a file the manifest does not vouch for is never loaded
    shutil.copytree(bundle, unlisted)
    man = json.loads((unlisted / "manifest.json").read_text())
    del man["files"]["model.int8.onnx"]
    (unlisted / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="changed after export"):  # an edited manifest is refused...
        OnnxLM(unlisted, int8=True)
    write_identity(unlisted)  # ...and, re-signed, it still vouches for no int8 graph
    with pytest.raises(ValueError, match="lists no"):
        OnnxLM(unlisted, int8=True)
    with pytest.raises(ValueError, match="offers"):
        OnnxLM(bundle, providers=("NoSuchExecutionProvider",))
    with pytest.raises(ValueError, match="no such folder"):
        OnnxLM(tmp_path / "nothing")
    (tmp_path / "no-manifest").mkdir()
    with pytest.raises(ValueError, match="not a heron language-model bundle .make one with `heron lm export`"):
        OnnxLM(tmp_path / "no-manifest")
    lm = OnnxLM(bundle)
    with pytest.raises(ValueError, match="empty"):
        lm.forward([])
    with pytest.raises(ValueError, match="context"):
        lm.forward(list(range(65)))
    with pytest.raises(ValueError, match="trim"):
        lm.trim(1)


def test_torch_early_exit_split_equals_forward(model):
    a, b = TorchLM(model), TorchLM(model)
    a.forward([1, 2, 3])
    b.forward([1, 2, 3])
    early = b.prefix([4, 5, 6], exit_layer=1)
    assert early.shape == (3, 300)
    assert np.abs(b.suffix() - a.forward([4, 5, 6])).max() < 1e-5
    assert a.length == b.length == 6
    with pytest.raises(ValueError, match="exit-layer"):
        b.prefix([1], exit_layer=2)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_stateful_step_traced_for_coreml_matches_plain_decoding(model):
    """The traced in-place-cache step (what the stateful Core ML package is converted from) generalizes over
    block lengths and positions, including a rollback (a smaller position overwrites rejected tokens)."""
    from heron.export.coreml_lm import trace_stateful
    _, traced = trace_stateful(model, max_len=64)
    x = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).logits
        pos = lambda i: torch.tensor([i], dtype=torch.int32)  # noqa: E731
        outs = [traced(x[:, :5], pos(0))] + [traced(x[:, i:i + 1], pos(i)) for i in range(5, 8)]
        traced(torch.tensor([[7, 7, 7]]), pos(8))  # a rejected draft block ...
        outs.append(traced(x[:, 8:12], pos(8)))      # ... overwritten from position 8
    assert (torch.cat(outs, 1) - ref).abs().max() < 1e-4


@pytest.mark.slow
def test_coreml_stateful_package_interface(model, tmp_path):
    pytest.importorskip("coremltools")
    import coremltools as ct

    from heron.export.coreml_lm import export_coreml_stateful
    names = export_coreml_stateful(model, tmp_path / "lm.mlpackage")
    spec = ct.utils.load_spec(str(tmp_path / "lm.mlpackage"))
    assert [s.name for s in spec.description.state] == ["k_cache", "v_cache"]
    assert [i.name for i in spec.description.input] == names["inputs"]


@pytest.mark.slow
def test_coreml_package_interface(model, tmp_path):
    pytest.importorskip("coremltools")
    import coremltools as ct

    from heron.export.coreml_lm import export_coreml
    names = export_coreml(model, tmp_path / "lm.mlpackage")
    spec = ct.utils.load_spec(str(tmp_path / "lm.mlpackage"))
    assert [i.name for i in spec.description.input] == names["inputs"]
    assert [o.name for o in spec.description.output] == names["outputs"]


def test_coreml_bundle_has_the_shared_file_table_and_identity(tmp_path):
    """A Core ML LM bundle is written through the one schema: file table, manifest.sha256, read back."""
    pytest.importorskip("coremltools")
    from heron.export.coreml_lm import export_coreml_bundle
    from heron.models.lm import checkpoint
    from heron.paths import default_lm_path
    from heron.runtime.bundle import read_manifest, verify_files
    from heron.runtime.manifest import LMCoreMLManifest

    _, tok, _ = checkpoint.load(default_lm_path())
    torch.manual_seed(0)
    tiny = Transformer(preset("tiny", n_layers=1, vocab_size=tok.vocab_size, max_seq_len=32)).eval()
    ck = checkpoint.save(tmp_path / "ck", tiny, tok, {"note": "test"})
    out = export_coreml_bundle(ck, tmp_path / "cm")
    doc, _ = read_manifest(out, "language-model")  # its identity matches
    m = LMCoreMLManifest.from_dict(doc, "cm")
    verify_files(out, m.files, "cm")
    assert set(m.files) == {"model", "tokenizer"} and m.states and m.inputs[0] == "tokens"
