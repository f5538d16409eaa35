"""Core ML export: converts on Linux, validated through its spec; bundle checksums cover .mlpackage folders."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")


def test_coreml_bundle_spec_and_checksums(tmp_path):
    from heron.export.kws_bundle import write_bundle
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.runtime.bundle import BundleError, load_bundle
    from heron.runtime.spotter import KeywordSpotter

    model = GatedConformer(PRESETS["tiny"]).eval()
    out = write_bundle(model, tmp_path / "coreml", calibration={}, target="coreml")
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"] == "coreml" and man["files"]["encoder"]["path"] == "encoder.mlpackage"
    assert set(man["encoder"]["outputs"][:3]) == {"log_probs", "embeddings", "gate_probs"}
    load_bundle(out)  # checksums of the package folder verify
    with pytest.raises(ValueError, match="coreml"):
        KeywordSpotter(load_bundle(out))
    weights = next((out / "encoder.mlpackage").rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(out)


def test_coreml_bundle_with_second_stage(tmp_path):
    from heron.export.coreml import output_names
    from heron.export.kws_bundle import write_bundle
    from heron.models.conformer import PRESETS, GatedConformer
    from heron.models.matcher import MatcherConfig, SLiCKMatcher
    from heron.models.text_encoder import AudioCompliantTextEncoder, TextEncoderConfig
    from heron.runtime.bundle import load_bundle

    model = GatedConformer(PRESETS["tiny"]).eval()
    d = model.config.d_model
    te = AudioCompliantTextEncoder(TextEncoderConfig(d_audio=d, d_model=32), table=torch.randn(39, d)).eval()
    mt = SLiCKMatcher(MatcherConfig(d_audio=d, d_text=32, d_model=32)).eval()
    out = write_bundle(model, tmp_path / "cm", calibration={}, target="coreml", verifier=(te, mt))
    man = json.loads((out / "manifest.json").read_text())
    assert {"encoder", "text_encoder", "matcher"} <= set(man["files"])
    assert output_names(out / "text_encoder.mlpackage") == ["text_embeddings"]
    assert output_names(out / "matcher.mlpackage") == ["match_prob", "subsequence_probs"]
    load_bundle(out)


def test_second_stage_onnx_matches_torch(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from heron.export.onnx_kws import export_matcher_onnx, export_text_encoder_onnx
    from heron.models.matcher import MatcherConfig, SLiCKMatcher
    from heron.models.text_encoder import AudioCompliantTextEncoder, TextEncoderConfig

    torch.manual_seed(0)
    te = AudioCompliantTextEncoder(TextEncoderConfig(d_audio=48, d_model=32), table=torch.randn(39, 48)).eval()
    mt = SLiCKMatcher(MatcherConfig(d_audio=48, d_text=32, d_model=32)).eval()
    export_text_encoder_onnx(te, tmp_path / "te.onnx")
    export_matcher_onnx(mt, tmp_path / "m.onnx")
    s_te, s_m = ort.InferenceSession(str(tmp_path / "te.onnx")), ort.InferenceSession(str(tmp_path / "m.onnx"))
    for n_ph, n_fr in ((3, 10), (12, 64)):  # dynamic lengths
        ids = torch.randint(1, 40, (1, n_ph))
        audio = torch.randn(1, n_fr, 48)
        with torch.no_grad():
            text = te(ids)
            utt, sub = mt(audio, torch.ones(1, n_fr, dtype=torch.bool), text, torch.ones(1, n_ph, dtype=torch.bool))
        text_o = s_te.run(None, {"phoneme_ids": ids.numpy()})[0]
        p, sp = s_m.run(None, {"audio_window": audio.numpy(), "text_embeddings": text_o})
        assert np.abs(text_o - text.numpy()).max() <= 1e-4
        assert abs(float(p[0]) - float(torch.sigmoid(utt)[0])) <= 1e-4
        assert np.abs(sp - torch.sigmoid(sub).numpy()).max() <= 1e-4


def test_exports_silence_progress_bars_and_restore_them(capsys):
    """coremltools draws a tqdm bar per conversion stage (bound by `from tqdm import tqdm` when it was
    imported): inside an export every bar is silent; tqdm stays a class and is itself again afterwards."""
    from tqdm import tqdm

    from heron.export.quiet import quiet_exporters

    with quiet_exporters():
        assert list(tqdm(range(3), desc="Running MIL")) == [0, 1, 2]
        assert isinstance(tqdm, type) and (tqdm | None) is not None  # what huggingface_hub's import does
    assert "Running MIL" not in capsys.readouterr().err
    list(tqdm(range(3), desc="after"))
    assert "after" in capsys.readouterr().err
