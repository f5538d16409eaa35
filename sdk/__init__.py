"""heron: on-device speech SDK (text-enrolled keyword spotting, small MoE LMs, mobile export).

The top-level package is the public API. It imports nothing heavy: torch lives behind the
`train`/`export` extras and is imported lazily by the commands that need it.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
