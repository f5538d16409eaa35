"""heron.models: torch training code (needs `pip install heron[train]`)."""
