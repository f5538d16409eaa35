"""A trained early-exit head for Mirror-SD: the shared LM head applied to an intermediate layer's hidden
state predicts the final tokens poorly, so a small residual adapter (RMSNorm + D x D, initialized to the
identity map) is distilled from the model's own final distribution. The model itself stays frozen, so
decoding stays lossless whatever the head predicts; only the draft's branch hit rate changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from heron.models.lm.model import RMSNorm, Transformer

FILE = "exit_head.safetensors"


class ExitHead(nn.Module):
    def __init__(self, dim: int, layer: int, eps: float = 1e-5):
        super().__init__()
        self.layer = layer  # the head reads the hidden state after `layer` layers (Mirror-SD's exit_layer)
        self.norm = RMSNorm(dim, eps)
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, model: Transformer, h):
        return model.head(h + self.proj(self.norm(h)))


def train_exit_head(model: Transformer, train_ids: np.ndarray, layer: int, steps: int = 300, seq_len: int = 128,
                    batch: int = 8, lr: float = 3e-3, seed: int = 0) -> ExitHead:
    """KL(final distribution || exit distribution) on training windows; the model is frozen."""
    if not 1 <= layer < model.cfg.n_layers:
        raise ValueError(f"exit layer must be in [1, {model.cfg.n_layers - 1}], got {layer}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = ExitHead(model.cfg.dim, layer, model.cfg.norm_eps)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    model.eval()
    for _ in range(steps):
        starts = rng.integers(0, len(train_ids) - seq_len, batch)
        x = torch.from_numpy(np.stack([train_ids[s:s + seq_len] for s in starts]).astype(np.int64))
        with torch.no_grad():
            h, _ = model.run_layers(model.embed(x), stop=layer)
            top, _ = model.run_layers(h, start=layer)
            target = model.logits(top).log_softmax(-1)
        pred = head(model, h).log_softmax(-1)
        loss = F.kl_div(pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1]), log_target=True,
                        reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def save(head: ExitHead, folder: str | Path, vocabulary: dict) -> None:
    """The head, with its layer and the `vocabulary` record of its model in the file's metadata."""
    import json

    from heron.models.weights_io import save_safetensors
    save_safetensors({k: v.contiguous() for k, v in head.state_dict().items()}, str(Path(folder) / FILE),
              metadata={"layer": str(head.layer), "vocabulary": json.dumps(vocabulary)})


def load(folder: str | Path, model: Transformer, vocabulary: dict, target: str = "the target") -> ExitHead | None:
    """The folder's exit head, or None when it has none; refused (naming both tokenizers) unless it was
    trained on a model with `vocabulary` (the target's vocabulary_record)."""
    import json

    from safetensors import safe_open

    from heron.runtime.tokenizer import require_same_vocabulary
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            layer = int(meta["layer"])
            record = json.loads(meta["vocabulary"]) if "vocabulary" in meta else None
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{path} is not a readable exit head: {e}") from e
    if not isinstance(record, dict):
        raise ValueError(f"{path} records no vocabulary (a head from before heron recorded one): retrain it "
                         "with heron lm train-exit")
    require_same_vocabulary(f"the exit head ({path})", record, target, vocabulary)
    if not 1 <= layer < model.cfg.n_layers:
        raise ValueError(f"{path}: exit layer {layer} is outside the target's 1..{model.cfg.n_layers - 1}")
    head = ExitHead(model.cfg.dim, layer, model.cfg.norm_eps)
    try:
        head.load_state_dict(state)
    except RuntimeError as e:  # torch lists every mismatched tensor over many lines
        raise ValueError(f"{path} does not fit the target (width {model.cfg.dim}): "
                         f"{str(e).splitlines()[-1].strip()}") from None
    return head.eval()
