"""heron.runtime: what runs on a device (numpy + onnxruntime only; never torch)."""

__version__ = "0.1.0"  # heron's version, written into every artifact (`heron.__version__` re-exports it)
