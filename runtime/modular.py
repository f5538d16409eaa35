"""Run the encoder module by module so that closed gates skip real work (numpy + onnxruntime).

The monolithic graph computes every module and multiplies it by its 0/1 gate; here each module is
its own small graph and a closed gate means the graph is not run at all. Caches are updated exactly
as the monolithic graph would (a skipped attention adds invalid zero keys, a skipped convolution adds
zeros to its history), so both paths give the same outputs.
"""
from __future__ import annotations

import numpy as np

class ModularEncoder:
    """Stateless apart from its sessions: streams keep their own state and skip counters."""

    def __init__(self, sessions: dict, n_layers: int, gate_threshold: float):
        self.s = sessions
        self.n_layers = n_layers
        self.gate_threshold = gate_threshold  # from the bundle's manifest (gates.threshold)

    def _run(self, name: str, feeds: dict):
        return self.s[name].run(None, feeds)

    def run_chunk(self, chunk: np.ndarray, state: dict[str, np.ndarray]):
        x, new_audio = self._run("frontend", {"audio_chunk": chunk.reshape(1, -1).astype(np.float32),
                                              "cached_audio": state["cached_audio"]})
        new = {"cached_audio": new_audio}
        gates = np.zeros((self.n_layers, 4), np.float32)
        C = x.shape[1]
        for i in range(self.n_layers):
            p = self._run(f"layer{i}_gate", {"x": x})[0][0]
            gates[i] = p
            on = p > self.gate_threshold
            if on[0]:
                x = self._run(f"layer{i}_ffn1", {"x": x})[0]
            kc, vc, kv = state[f"cached_key_{i}"], state[f"cached_value_{i}"], state[f"cached_valid_{i}"]
            if on[1]:
                x, k, v, valid = self._run(f"layer{i}_attn", {"x": x, "k_cache": kc, "v_cache": vc, "key_valid": kv})
            else:  # the chunk's keys do not exist: shift in invalid zeros
                z = np.zeros(kc.shape[:2] + (C, kc.shape[3]), np.float32)
                k = np.concatenate([kc, z], axis=2)[:, :, C:]
                v = np.concatenate([vc, z], axis=2)[:, :, C:]
                valid = np.concatenate([kv, np.zeros((kv.shape[0], C), np.float32)], axis=1)[:, C:]
            new[f"cached_key_{i}"], new[f"cached_value_{i}"], new[f"cached_valid_{i}"] = k, v, valid
            hist = state[f"cached_conv_{i}"]
            if on[2]:
                x, hist = self._run(f"layer{i}_conv", {"x": x, "hist": hist})
            else:  # skipped chunks feed zeros into the convolution history
                hist = np.concatenate([hist, np.zeros(hist.shape[:2] + (C,), np.float32)], axis=2)[:, :, C:]
            new[f"cached_conv_{i}"] = hist
            if on[3]:
                x = self._run(f"layer{i}_ffn2", {"x": x})[0]
            x = self._run(f"layer{i}_norm", {"x": x})[0]
        log_probs = self._run("head", {"x": x})[0]
        return log_probs[0], x[0], gates, new
