"""Run the encoder module by module so that closed gates skip real work (numpy + onnxruntime).

The monolithic graph computes every module and multiplies it by its 0/1 gate; here each module is
its own small graph and a closed gate means the graph is not run at all. Caches are updated exactly
as the monolithic graph would (a skipped attention adds invalid zero keys, a skipped convolution adds
zeros to its history), so both paths give the same outputs.

With a speech gate (heron.runtime.speech_gate), a chunk it closes runs no module at all: every layer's
caches move on exactly as if all its gates were closed, and the chunk's frames are blank (the CTC
matcher's clock advances; detection times stay absolute). When the gate opens again, the last closed
chunks (PAST_CHUNKS, kept as audio) run through the front end and the layers first, their outputs dropped:
the encoder meets the word with the context just before it, as it would without the gate. With the
policy's `steady_db`, steady non-speech after a clearly closed chunk runs no graph at all (not even the
front end and the gate; heron.runtime.speech_gate).
"""
from __future__ import annotations

import numpy as np

from heron.runtime.sessions import runner
from heron.runtime.speech_gate import PAST_CHUNKS, PAST_KEY, STATE_KEY, STEADY_KEY, STEADY_MAX_CHUNKS, GatePolicy, level_db

BLANK_LOG_PROB = -30.0  # a closed chunk's non-blank classes: the matcher hears nothing there


class ModularEncoder:
    """Stateless apart from its sessions: streams keep their own state and skip counters."""

    def __init__(self, sessions: dict, n_layers: int, gate_threshold: float, n_classes: int, blank: int,
                 state_shapes: dict[str, tuple[int, ...]], speech_gate=None, policy: GatePolicy | None = None):
        self.s = sessions
        self._runners = {name: runner(sess) for name, sess in sessions.items()}
        self._gate_run = runner(speech_gate) if speech_gate is not None else None
        self.n_layers = n_layers
        self.gate_threshold = gate_threshold  # from the bundle's manifest (gates.threshold)
        self.n_classes, self.blank = n_classes, blank
        self.speech_gate, self.policy = speech_gate, policy  # session and policy, or None
        self._zero_caches(state_shapes)
        self._closed: dict = {}  # a closed chunk's outputs, made once (_closed_outputs)

    @staticmethod
    def _shift_attn(state: dict, new: dict, i: int, C: int) -> None:
        """Layer i's attention cache for a chunk whose attention did not run: its keys do not exist."""
        kc, vc, kv = state[f"cached_key_{i}"], state[f"cached_value_{i}"], state[f"cached_valid_{i}"]
        z = np.zeros(kc.shape[:2] + (C, kc.shape[3]), np.float32)
        new[f"cached_key_{i}"] = np.concatenate([kc, z], axis=2)[:, :, C:]
        new[f"cached_value_{i}"] = np.concatenate([vc, z], axis=2)[:, :, C:]
        new[f"cached_valid_{i}"] = np.concatenate([kv, np.zeros((kv.shape[0], C), np.float32)], axis=1)[:, C:]

    @staticmethod
    def _shift_conv(state: dict, new: dict, i: int, C: int) -> None:
        """Layer i's convolution history for a chunk whose convolution did not run: zeros come in."""
        hist = state[f"cached_conv_{i}"]
        new[f"cached_conv_{i}"] = np.concatenate([hist, np.zeros(hist.shape[:2] + (C,), np.float32)], axis=2)[:, :, C:]

    def _closed_caches(self, state: dict, new: dict, C: int) -> None:
        """Every layer's caches for a chunk the speech gate closed (as if all its modules were closed).
        Once a closed stretch has shifted a layer's caches to all zeros, they are replaced by shared
        read-only zero arrays, so the rest of the stretch costs one identity test per cache."""
        if all(state[n] is z for n, z in self._zeros.items()):  # a long closed stretch: all zeros already
            new.update(self._zeros)
            return
        for i, names in enumerate(self._cache_names):
            if all(state[n] is self._zeros[n] for n in names):  # this layer's caches are all zeros already
                new.update({n: state[n] for n in names})
                continue
            self._shift_attn(state, new, i, C)
            self._shift_conv(state, new, i, C)
            if not any(new[n].any() for n in names):
                new.update({n: self._zeros[n] for n in names})

    def _closed_outputs(self, C: int, D: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log_probs, embeddings, gates) of a closed chunk: blank frames, zero embeddings, closed gates.
        Made once and shared read-only: a long closed stretch allocates nothing per chunk."""
        key = (C, D)
        if self._closed.get("key") != key:
            log_probs = np.full((C, self.n_classes), BLANK_LOG_PROB, np.float32)
            log_probs[:, self.blank] = 0.0
            outs = (log_probs, np.zeros((C, D), np.float32), np.zeros((self.n_layers, 4), np.float32))
            for a in outs:
                a.flags.writeable = False
            self._closed = {"key": key, "outs": outs}
        return self._closed["outs"]

    def _zero_caches(self, shapes: dict) -> None:
        self._cache_names = [tuple(f"cached_{k}_{i}" for k in ("key", "value", "valid", "conv"))
                             for i in range(self.n_layers)]
        self._zeros = {}
        for names in self._cache_names:
            for n in names:
                z = np.zeros(shapes[n], np.float32)
                z.flags.writeable = False
                self._zeros[n] = z

    def _run(self, name: str, feeds: dict):
        return self._runners[name](feeds)

    def _frontend(self, chunk: np.ndarray, context: np.ndarray):
        x, new_audio = self._run("frontend", {"audio_chunk": chunk, "cached_audio": context})
        self._cd = x.shape[1:]  # (frames, width) of a chunk: what a skipped chunk's outputs look like
        return x, new_audio

    def run_chunk(self, chunk: np.ndarray, state: dict[str, np.ndarray]):
        chunk = np.asarray(chunk, np.float32).reshape(1, -1)
        if self.speech_gate is None:
            x, new_audio = self._frontend(chunk, state["cached_audio"])
            new = {"cached_audio": new_audio}
            x, gates = self._layers(x, state, new)
            return self._run("head", {"x": x})[0][0], x[0], gates, new
        pol = self.policy
        n, ctx = chunk.shape[1], state["cached_audio"].shape[1]
        was_open = bool(state[STATE_KEY][0])
        closed_run, ref_db, skipped, last_db = (float(v) for v in state[STEADY_KEY])
        past = state[PAST_KEY]  # the audio before this chunk: the front end's context + the last chunks
        new = {PAST_KEY: np.concatenate([past, chunk], axis=1)[:, n:]}
        lvl = level_db(chunk[0]) if pol.steady_db else np.nan
        if pol.steady_db and not was_open and ref_db == ref_db and skipped < STEADY_MAX_CHUNKS \
                and lvl <= ref_db + pol.steady_db:  # steady non-speech: nothing runs
            new["cached_audio"] = new[PAST_KEY][:, -ctx:]  # the front end's context is the raw audio
            new[STATE_KEY] = state[STATE_KEY]
            new[STEADY_KEY] = np.array([min(closed_run + 1, PAST_CHUNKS), ref_db, skipped + 1, lvl], np.float32)
            self._closed_caches(state, new, self._cd[0])
            return (*self._closed_outputs(*self._cd), new)
        x, new["cached_audio"] = self._frontend(chunk, state["cached_audio"])
        C = x.shape[1]
        p = float(self._gate_run({"x": x})[0].reshape(-1)[0])
        is_open, new[STATE_KEY] = pol.step(p, state[STATE_KEY])
        if not is_open:  # no speech: no encoder module runs for this chunk
            # a steady-skip reference: a clearly closed chunk no louder than the one before (after a jump in
            # level, the next chunk is scored too: the gate may have missed the start of speech)
            ref = lvl if p < pol.release and lvl <= last_db + pol.steady_db else np.nan
            new[STEADY_KEY] = np.array([min(closed_run + 1, PAST_CHUNKS), ref, 0.0, lvl], np.float32)
            self._closed_caches(state, new, C)
            return (*self._closed_outputs(C, x.shape[2]), new)
        new[STEADY_KEY] = np.array([0.0, np.nan, 0.0, lvl], np.float32)
        if not was_open and closed_run:  # opening: the last closed chunks run first, for context (outputs dropped)
            caches = {k: v for k, v in state.items() if k.startswith("cached_") and k != "cached_audio"}
            for k in range(int(closed_run), 0, -1):  # k chunks before this one
                at = past.shape[1] - k * n
                px, _ = self._frontend(past[:, at:at + n], past[:, at - ctx:at])
                step: dict = {}
                self._layers(px, caches, step)
                caches = step
            state = {**state, **caches}
        x, gates = self._layers(x, state, new)
        log_probs = self._run("head", {"x": x})[0]
        return log_probs[0], x[0], gates, new

    def _layers(self, x: np.ndarray, state: dict, new: dict):
        """The encoder's layers on one chunk's front-end output; caches from `state` into `new`."""
        gates = np.zeros((self.n_layers, 4), np.float32)
        C = x.shape[1]
        for i in range(self.n_layers):
            p = self._run(f"layer{i}_gate", {"x": x})[0][0]
            gates[i] = p
            on = p > self.gate_threshold
            if on[0]:
                x = self._run(f"layer{i}_ffn1", {"x": x})[0]
            if on[1]:
                x, *kv = self._run(f"layer{i}_attn", {"x": x, "k_cache": state[f"cached_key_{i}"],
                                                      "v_cache": state[f"cached_value_{i}"],
                                                      "key_valid": state[f"cached_valid_{i}"]})
                new[f"cached_key_{i}"], new[f"cached_value_{i}"], new[f"cached_valid_{i}"] = kv
            else:
                self._shift_attn(state, new, i, C)
            if on[2]:
                x, new[f"cached_conv_{i}"] = self._run(f"layer{i}_conv", {"x": x, "hist": state[f"cached_conv_{i}"]})
            else:
                self._shift_conv(state, new, i, C)
            if on[3]:
                x = self._run(f"layer{i}_ffn2", {"x": x})[0]
            x = self._run(f"layer{i}_norm", {"x": x})[0]
        return x, gates
