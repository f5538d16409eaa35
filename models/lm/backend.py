"""The torch backend (cpu, cuda, mps) of the runtime's LM backend interface (heron.runtime.lm.LMBackend),
plus the split target Mirror-SD needs: `prefix` runs the layers below the early exit and returns its
candidates' logits, `suffix` finishes the same block.

Routing is a backend option: dial-k (`Routing.k`) and Roster of Experts (`Routing.roe_samples` > 1:
R routing samples of each token run as one batch; the backend returns the log of their averaged
next-token distributions, so the engine's one sampler draws from the ensemble).
"""
from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import torch

from heron.models.lm.model import KVCache, Routing, Transformer
from heron.models.lm.quant import pack_linears


def pick_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--target-device cuda: no CUDA GPU is visible to torch here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--target-device mps: Metal is not available here")
    return device


class TorchLM:
    def __init__(self, model: Transformer, device: str = "cpu", threads: int | None = None, k: int | None = None,
                 max_len: int | None = None, exit_head=None, routing: Routing | None = None,
                 end_ids: Collection[int] = ()):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        if self.device == "cpu":  # fp32 inference on oneDNN's kernels with packed weights (quant.pack_linears)
            pack_linears(self.model)
        if threads:
            torch.set_num_threads(threads)
        route = routing or Routing()
        if k is not None:
            route = Routing(k=model.resolve_k(k), roe_samples=route.roe_samples, roe_tau=route.roe_tau, seed=route.seed)
        if route.roe_samples > 1 and not model.cfg.n_experts:
            raise ValueError("Roster of Experts needs an MoE model; this one is dense")
        self.route = route
        self.end_ids = frozenset(end_ids)  # generation stops at any of these
        self.vocab_size = model.cfg.vocab_size
        self.max_len = max_len or model.cfg.max_seq_len
        self.cache = KVCache(model.cfg, batch=1, max_len=self.max_len, device=self.device)
        self.name = f"torch[{self.device}]"
        self.exit_head = exit_head.to(self.device) if exit_head is not None else None
        self._pending = None

    @property
    def length(self) -> int:
        return self.cache.length

    def block(self, tokens: Sequence[int]) -> torch.Tensor:
        """A block of token ids as a (1, T) tensor on the target's device, refused if the context cannot hold it."""
        if len(tokens) == 0:
            raise ValueError("empty token block")
        if self.length + len(tokens) > self.max_len:
            raise ValueError(f"{self.length + len(tokens)} positions exceed the context of {self.max_len}")
        return torch.tensor([list(tokens)], device=self.device)

    def _combine(self, logits: torch.Tensor) -> np.ndarray:
        """(R, T, V) logits of the routing samples -> (T, V): log of their averaged distributions."""
        if logits.shape[0] == 1:
            return logits[0].float().cpu().numpy()
        lp = torch.log_softmax(logits.float(), dim=-1)  # (R, T, V)
        return (torch.logsumexp(lp, dim=0) - np.log(lp.shape[0])).cpu().numpy()

    @torch.no_grad()
    def forward(self, tokens: Sequence[int], last: int | None = None) -> np.ndarray:
        """-> logits (T, V), or of the block's `last` positions only (the head skips the others)."""
        return self._combine(self.model(self.block(tokens), self.cache, self.route, last=last).logits)

    @torch.no_grad()
    def prefix(self, tokens: Sequence[int], exit_layer: int) -> np.ndarray:
        """Run layers [0, exit_layer) on the block; -> early-exit logits (T, V). Call `suffix()` next."""
        if not 1 <= exit_layer < self.model.cfg.n_layers:
            raise ValueError(f"--exit-layer must be in [1, {self.model.cfg.n_layers - 1}], got {exit_layer}")
        h, _ = self.model.run_layers(self.model.embed(self.block(tokens)), self.cache, self.route, stop=exit_layer)
        self._pending = (exit_layer, h)
        if self.exit_head is not None and self.exit_head.layer == exit_layer:  # a trained head, if it fits
            return self._combine(self.exit_head(self.model, h))
        return self._combine(self.model.head(h))

    @torch.no_grad()
    def suffix(self) -> np.ndarray:
        """Finish the block started by `prefix`: layers [exit_layer, n) and the head -> logits (T, V)."""
        if self._pending is None:
            raise RuntimeError("suffix() without a prefix() call")
        layer, h = self._pending
        self._pending = None
        h, _ = self.model.run_layers(h, self.cache, self.route, start=layer)
        return self._combine(self.model.logits(h, self.route))

    def trim(self, n: int) -> None:
        self.cache.trim(n)

    def reset(self) -> None:
        self.cache.reset()

    def snapshot(self):
        return self.cache.length  # positions beyond it are rewritten, never read: a length is enough for rewinds

    def restore(self, state) -> None:
        if state > self.cache.length:
            raise ValueError("a torch cache can only be rewound, not moved forward")
        self.cache.trim(self.cache.length - state)  # only the cache moves its own offset
