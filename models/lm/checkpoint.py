"""An LM checkpoint is a folder: model.safetensors, config.json (model config + how it was trained) and
tokenizer.json. Loading never unpickles anything; a checkpoint that does not match its config is refused."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from heron.models.lm.model import LMConfig, Transformer, config_from_dict
from heron.models.lm.tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FORMAT = "heron-lm/1"


SCALE_SUFFIX = ".int8_scale"
INT8_MIN_NUMEL = 4096  # smaller tensors (norms, routers of tiny models) stay float


def quantize_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight-only int8: every large matrix gets symmetric per-row int8 values and fp16 row scales."""
    out = {}
    for k, v in state.items():
        if v.dim() >= 2 and v.numel() >= INT8_MIN_NUMEL:
            scale = (v.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(1e-12)
            out[k] = torch.round(v / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[k + SCALE_SUFFIX] = scale.to(torch.float16).contiguous()
        else:
            out[k] = v.to(torch.float16).contiguous()
    return out


def dequantize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        if v.dtype == torch.int8:
            if k + SCALE_SUFFIX not in state:
                raise ValueError(f"int8 tensor {k} has no {SCALE_SUFFIX} row scales")
            out[k] = v.float() * state[k + SCALE_SUFFIX].float()
        else:
            out[k] = v.float()
    return out


def save(folder: str | Path, model: Transformer, tokenizer: Tokenizer, meta: dict | None = None,
         dtype=torch.float32, int8: bool = False) -> Path:
    """int8=True stores weight-only int8 (per-row scales), about a quarter of the float32 size."""
    from heron.models.weights_io import save_safetensors
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_embeddings and k == "lm_head.weight")}
    if int8:
        state = quantize_int8({k: v.float() for k, v in state.items()})
        meta = {**(meta or {}), "weights": "int8 per-row (weight-only), fp16 scales"}
    save_safetensors(state, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps({"format": FORMAT, "config": config_dict(model.cfg), "meta": meta or {}},
                                            indent=1))
    tokenizer.save(folder / TOKENIZER)
    return folder


def load(folder: str | Path, dtype=torch.float32) -> tuple[Transformer, Tokenizer, dict]:
    """-> (model in eval mode, tokenizer, meta). ValueError on a corrupt or mismatched checkpoint."""
    from safetensors.torch import load_file
    folder = Path(folder)
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a heron LM checkpoint: {name} is missing")
    try:
        doc = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / CONFIG} is not valid JSON: {e}") from e
    if doc.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: expected format {FORMAT!r}, got {doc.get('format')!r}")
    if not isinstance(doc.get("config"), dict):
        raise ValueError(f"{folder / CONFIG}: 'config' must be an object")
    try:
        cfg = config_from_dict(doc["config"])
    except TypeError as e:  # a field of the wrong type
        raise ValueError(f"{folder / CONFIG}: {e}") from None
    check_shapes(cfg, header_shapes(folder / WEIGHTS), folder / WEIGHTS)  # before any allocation
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{folder / WEIGHTS} is not a readable safetensors file: {e}") from e
    try:
        model, missing, unexpected = Transformer.with_weights(cfg, dequantize(state))
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"checkpoint does not match its config: {str(e).splitlines()[1:3]}") from e
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not match its config: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    for name, p in model.state_dict().items():
        if not torch.isfinite(p).all():
            raise ValueError(f"{folder / WEIGHTS}: tensor {name} holds NaN or inf")
    tok = Tokenizer.load(folder / TOKENIZER)
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
    return model.to(dtype).eval(), tok, doc.get("meta", {})


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (reads the header only)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def check_shapes(cfg: LMConfig, shapes: dict[str, tuple[int, ...]], where) -> None:
    """The config must describe exactly the tensors stored: compared on a meta-device model, which
    allocates nothing, so a crafted config.json fails here instead of allocating gigabytes."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        want.pop("lm_head.weight", None)
    have = {k: v for k, v in shapes.items() if not k.endswith(SCALE_SUFFIX)}
    wrong = [k for k in want if k in have and have[k] != want[k]]
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if wrong or missing or extra:
        detail = (f"{wrong[0]} is {list(have[wrong[0]])} in the file, {list(want[wrong[0]])} in the config" if wrong
                  else f"missing {missing[:3]}, unexpected {extra[:3]}")
        raise ValueError(f"{where} does not match its config.json: {detail}")


def is_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def config_dict(cfg: LMConfig) -> dict:
    d = asdict(cfg)
    d["dense_layers"] = list(d["dense_layers"])
    return d
