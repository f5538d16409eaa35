"""`heron doctor`: what this machine has for heron, and what to install for what is missing."""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys

_EXTRAS = {  # module -> (extra, what it is for)
    "torch": ("train", "training and export"),
    "tqdm": ("train", "progress bars"),
    "matplotlib": ("train", "DET plots"),
    "onnx": ("export", "ONNX export"),
    "onnxscript": ("export", "ONNX export (dynamo exporter)"),
    "coremltools": ("export", "Core ML export"),
    "sounddevice": ("mic", "live microphone input"),
    "pytest": ("dev", "the test suite"),
}
_APT_HINT = {
    "espeak": "apt-get install espeak-ng",
    "mbrola": "apt-get install mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 (Debian contrib/non-free)",
    "flite": "apt-get install flite",
    "festival": "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
    "pico": "apt-get install libttspico-utils (Debian non-free)",
}


def report() -> list[tuple[str, str, str]]:
    """(section, item, status) rows."""
    from heron import __version__
    from heron.runtime.metrics import machine

    rows: list[tuple[str, str, str]] = [
        ("heron", "version", __version__),
        ("heron", "python", f"{platform.python_version()} ({sys.executable})"),
        ("heron", "platform", f"{platform.system()} {platform.machine()}"),
        ("heron", "cpu", machine()),
    ]
    # shipped bundles: verified, with the sha256 of their manifests (the bundle's identity)
    from heron.runtime.bundle import BundleError, load_bundle
    from heron.runtime.lm import DEFAULT_DRAFT, OnnxLM
    from heron.runtime.pinned import SHIPPED

    def kws():
        b = load_bundle()  # $HERON_BUNDLE, else the shipped one
        return b.root, b.identity

    for name, load in (("kws", kws), ("lm-draft", lambda: (DEFAULT_DRAFT, OnnxLM(DEFAULT_DRAFT).identity))):
        try:
            root, identity = load()  # a shipped bundle whose identity is not the pinned one is refused here
            pin = ("matches the identity pinned in heron" if identity == SHIPPED[name]
                   else f"another bundle; the shipped one's pinned identity is {SHIPPED[name][:16]}...")
            rows.append(("bundles", name, f"ok: {root}, manifest sha256 {identity} ({pin})"))
        except (BundleError, ValueError, OSError) as e:
            rows.append(("bundles", name, f"BROKEN: {e}"))
    # TTS engines
    try:
        from heron.models.data import tts

        for name, eng in tts.ENGINES.items():
            if eng.available():
                try:
                    n = len(eng.base_voices())
                    rows.append(("tts", name, f"ok: {n} voices ({eng.version()})"))
                except (RuntimeError, OSError) as e:
                    rows.append(("tts", name, f"broken: {e}"))
            else:
                rows.append(("tts", name, f"missing: {_APT_HINT[name]}"))
    except ImportError as e:
        rows.append(("tts", "engines", f"cannot check: {e}"))
    rows.append(("tools", "sox", "ok" if shutil.which("sox") else "missing: apt-get install sox"))
    # onnxruntime
    try:
        import onnxruntime as ort

        rows.append(("onnxruntime", "version", ort.__version__))
        rows.append(("onnxruntime", "providers", ", ".join(ort.get_available_providers())))
    except ImportError:
        rows.append(("onnxruntime", "version", "missing: pip install onnxruntime"))
    # heron's native decoder (heron lm ... --engine native): built for this CPU by make setup
    from heron.runtime import native
    try:
        lib = native.load()
        kernels = {0: "portable C", 1: "AVX2", 2: "AVX2 + VNNI", 3: "AVX-512 + VNNI"}.get(lib.hl_simd(), "?")
        rows.append(("native", "decoder", f"built ({kernels} kernels)"))
        if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":  # read by OpenMP once, at load
            rows.append(("native", "threads", "slow: OMP_WAIT_POLICY=PASSIVE puts the decoder's threads to sleep at "
                                              "each of its barriers (2.4x slower at two threads on machine Z): unset it "
                                              "for heron"))
    except native.NativeError as e:
        rows.append(("native", "decoder", f"missing: {e}"))
    # optional extras
    for mod, (extra, why) in _EXTRAS.items():
        ok = importlib.util.find_spec(mod) is not None
        rows.append(("extras", mod, f"ok ({why})" if ok else f"missing ({why}): pip install 'heron[{extra}]'"))
    # audio devices
    if importlib.util.find_spec("sounddevice") is None:
        rows.append(("audio", "devices", "cannot list: pip install 'heron[mic]'"))
    else:
        try:
            import sounddevice as sd

            devs = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
            rows.append(("audio", "input devices", ", ".join(d["name"] for d in devs) if devs else
                         "none (no sound card; see README for a PulseAudio virtual microphone)"))
        except (OSError, RuntimeError) as e:
            rows.append(("audio", "input devices", f"unavailable: {e} (apt-get install libportaudio2)"))
    return rows


def _run(args) -> int:
    rows = report()
    section = None
    for sec, item, status in rows:
        if sec != section:
            print(f"{sec}:")
            section = sec
        print(f"  {item:14s} {status}")
    return 0


def register(sub, formatter) -> None:
    p = sub.add_parser("doctor", help="report TTS engines, audio devices, onnxruntime providers, extras",
                       formatter_class=formatter)
    p.set_defaults(func=_run)
