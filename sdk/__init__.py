"""heron: on-device speech SDK (text-enrolled keyword spotting, small MoE LMs, mobile export).

    import heron
    spotter = heron.KeywordSpotter.load()      # the shipped model (numpy + onnxruntime)
    spotter.enroll("hey heron")
    stream = spotter.stream()
    for det in stream.accept(pcm_chunk):       # int16 or float32 mono at the stream's sample_rate (16 kHz), any chunk
        print(det)

    lm = heron.load_lm()                       # the shipped LM (or any checkpoint / ONNX bundle)
    for token in lm.generate("Return the number of", heron.GenerationOptions(max_new_tokens=32)):
        print(token.text, end="")

The top-level package imports nothing heavy: torch lives behind the `train`/`export` extras and is
imported lazily by the commands that need it; the runtime classes load on first use.
"""
from heron.runtime import __version__  # one version, defined with the runtime

__all__ = ["__version__", "KeywordSpotter", "Detection", "pronounce", "load_lm", "LanguageModel", "GenerationOptions",
           "SpeculativeOptions", "DecodeStats", "Token", "Conversation"]

_LM_NAMES = ("load_lm", "LanguageModel", "GenerationOptions", "SpeculativeOptions", "DecodeStats", "Token",
             "Conversation")


def __getattr__(name):  # lazy: `import heron` stays instant and torch-free
    if name in ("KeywordSpotter", "Detection"):
        from heron.runtime import spotter

        return getattr(spotter, name)
    if name == "pronounce":
        from heron.runtime.phonemes import pronounce

        return pronounce
    if name in _LM_NAMES:
        from heron import lm

        return getattr(lm, name)
    raise AttributeError(f"module 'heron' has no attribute {name!r}")
