"""Exports print what heron decides, not the exporters' chatter: torch.onnx's registry notes (one per
missing torchvision op, hundreds per bundle), pytree deprecation warnings, onnxruntime.quantization's
pre-processing advice and coremltools' progress bars are silenced for the duration of an export. Errors
still raise."""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings

NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")


@contextlib.contextmanager
def _silent_progress_bars():
    """Every tqdm bar made inside the block is disabled (coremltools draws one per conversion stage). tqdm's
    class stays the class (libraries annotate with it), only its constructor is wrapped, and restored after."""
    try:
        from tqdm import std
    except ImportError:
        yield
        return
    init = std.tqdm.__init__

    def silent(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    std.tqdm.__init__ = silent
    try:
        yield
    finally:
        std.tqdm.__init__ = init


@contextlib.contextmanager
def quiet_exporters():
    """Silence third-party warnings and INFO/WARNING logs inside the block (restored after)."""
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS] + [logging.getLogger()]  # root: onnxruntime.quantization
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with _silent_progress_bars():
                yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def quietly(fn):
    """Decorator: run `fn` inside `quiet_exporters()` (its signature and docstring kept)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with quiet_exporters():
            return fn(*args, **kwargs)
    return wrapper
