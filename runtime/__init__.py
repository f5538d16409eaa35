"""heron.runtime: what runs on a device (numpy + onnxruntime only; never torch)."""
