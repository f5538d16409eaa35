"""The public API is typed: every parameter and return of heron's exported names (and the objects they
hand out: streams, detections) carries an annotation that resolves."""
import inspect
import typing

import heron
from heron.runtime.spotter import Stream


def _public_callables():
    for name in heron.__all__:
        obj = getattr(heron, name)
        if inspect.isclass(obj):
            yield from ((f"{name}.{k}", v) for k, v in vars(obj).items()
                        if not k.startswith("_") and inspect.isfunction(v))
        elif inspect.isfunction(obj):
            yield name, obj
    yield from ((f"Stream.{k}", v) for k, v in vars(Stream).items() if not k.startswith("_") and inspect.isfunction(v))


def test_every_public_function_is_annotated():
    missing = []
    for qualname, fn in _public_callables():
        sig = inspect.signature(fn)
        params = [p.name for p in sig.parameters.values()
                  if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
        if params or sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{qualname}({', '.join(params)}){'' if sig.return_annotation is not inspect.Signature.empty else ' -> ?'}")
        typing.get_type_hints(fn)  # the annotations resolve (no stale or misspelt names)
    assert not missing, "unannotated public API: " + "; ".join(missing)
