"""heron.export: torch -> ONNX / Core ML artifacts (needs `pip install heron[export]`)."""
