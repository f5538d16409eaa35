"""One place that turns "--speculative {none,draft,mtp,mirror}" and its options into a decoder, for the
CLI, the benchmark and the demo. A decoder is a callable (prompt_ids, DecodeOptions, DecodeStats,
detok) -> iterator of heron.runtime.lm.Token.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from heron.models.lm.backend import TorchLM
from heron.models.lm.model import Transformer
from heron.runtime import speculative as sp
from heron.runtime.lm import DEFAULT_DRAFT, OnnxLM

METHODS = ("none", "draft", "mtp", "mirror")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LM = ROOT / "models" / "weights" / "lm-nano"
DEFAULT_MTP = DEFAULT_LM / "mtp"
PROVIDERS = {"cpu": "CPUExecutionProvider", "coreml": "CoreMLExecutionProvider", "qnn": "QNNExecutionProvider",
             "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider", "xnnpack": "XnnpackExecutionProvider"}


@dataclass
class DecoderOptions:
    method: str = "none"
    gamma: int = 4               # draft tokens per round
    kappa: int = 2               # Mirror-SD: early-exit candidates per window position
    exit_layer: int = 2          # Mirror-SD: the target's early-exit layer
    draft: str | None = None     # ONNX draft bundle folder (default: the shipped lm-draft)
    draft_device: str = "cpu"    # onnxruntime provider for the draft: cpu, coreml, qnn, cuda, ... or a full name
    draft_threads: int = 1
    draft_int8: bool = True
    target_device: str = "cpu"   # torch device for the target: cpu, cuda, mps, auto
    target_threads: int = 1
    mtp: str | None = None       # MTP adapter folder (default: the shipped one)
    k: int | None = None         # the target's active experts
    model_dir: str | None = None # the target's folder (its trained early-exit head, if any, is used by Mirror-SD)
    exit_head: str | None = None # Mirror-SD: folder of a trained early-exit head (default: model_dir's)

    def __post_init__(self):
        for name in ("gamma", "kappa", "draft_threads", "target_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.exit_layer, bool) or not isinstance(self.exit_layer, int) or self.exit_layer < 0:
            raise ValueError(f"exit_layer must be an integer >= 0, got {self.exit_layer!r}")


def provider(name: str) -> str:
    return PROVIDERS.get(name.lower(), name)


def load_draft(o: DecoderOptions) -> OnnxLM:
    folder = Path(o.draft) if o.draft else DEFAULT_DRAFT
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(f"no draft bundle at {folder} (export one with: heron export --lm CHECKPOINT --out DIR)")
    import json
    int8 = o.draft_int8 and "model.int8.onnx" in json.loads((folder / "manifest.json").read_text()).get("sha256", {})
    return OnnxLM(folder, providers=(provider(o.draft_device),), threads=o.draft_threads, int8=int8)


def make_decoder(model: Transformer, o: DecoderOptions):
    if o.method not in METHODS:
        raise ValueError(f"--speculative must be one of {', '.join(METHODS)}, got {o.method!r}")
    torch.set_num_threads(o.target_threads)
    if o.method == "mtp":
        from heron.models.lm.mtp import generate_mtp, load_adapter
        mtp = load_adapter(model, o.mtp or DEFAULT_MTP)

        def run_mtp(prompt, opts, stats, detok=None):
            return generate_mtp(mtp, prompt, opts, stats, detok, n_drafts=o.gamma)
        return run_mtp
    head = None
    if o.method == "mirror":
        from heron.models.lm import early_exit
        head = early_exit.load(o.exit_head or o.model_dir or DEFAULT_LM, model)
    target = TorchLM(model, device=o.target_device, k=o.k, exit_head=head)
    if o.method == "none":
        return lambda prompt, opts, stats, detok=None: sp.plain(target, prompt, opts, stats, detok)
    draft = load_draft(o)
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.vocab_size}) differs from the target's ({target.vocab_size})")
    if o.method == "draft":
        return lambda prompt, opts, stats, detok=None: sp.speculative(target, draft, prompt, opts, o.gamma, stats, detok)
    return lambda prompt, opts, stats, detok=None: sp.mirror(target, draft, prompt, opts, o.gamma, o.kappa,
                                                               o.exit_layer, stats, detok)
