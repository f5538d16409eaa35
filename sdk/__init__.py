"""heron: on-device speech SDK (text-enrolled keyword spotting, small MoE LMs, mobile export).

    import heron
    spotter = heron.KeywordSpotter.load()      # the shipped model (numpy + onnxruntime)
    spotter.enroll("hey heron")
    stream = spotter.stream()
    for det in stream.accept(pcm_chunk):       # int16 or float32, 16 kHz mono, any chunk size
        print(det)

The top-level package imports nothing heavy: torch lives behind the `train`/`export` extras and is
imported lazily by the commands that need it; the runtime classes load on first use.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "KeywordSpotter", "Detection", "pronounce"]


def __getattr__(name):  # lazy: `import heron` stays instant and torch-free
    if name in ("KeywordSpotter", "Detection"):
        from heron.runtime import spotter

        return getattr(spotter, name)
    if name == "pronounce":
        from heron.runtime.phonemes import pronounce

        return pronounce
    raise AttributeError(f"module 'heron' has no attribute {name!r}")
