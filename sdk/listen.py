"""Live listening: stream a wav file (optionally in real time) or a microphone through the spotter.

Used by `heron listen` and demos/mic_stream.py. The microphone needs `pip install heron[mic]` and an
input device (`heron doctor` lists them).
"""
from __future__ import annotations

import queue
import sys
import time

import numpy as np

from heron.runtime.phonemes import describe_guesses
from heron.runtime.spotter import Detection, KeywordSpotter
from heron.cli_kws import MODEL_SHA256_HELP

BLOCK_SECONDS = 0.1


def level_meter(block: np.ndarray, width: int = 30) -> str:
    """A text bar for the block's level (dBFS, -60..0)."""
    rms = float(np.sqrt(np.mean(np.square(block.astype(np.float64))) + 1e-12))
    db = max(-60.0, 20 * np.log10(rms))
    n = int((db + 60) / 60 * width)
    return f"[{'#' * n}{'.' * (width - n)}] {db:6.1f} dBFS"


def listen_file(spotter: KeywordSpotter, path: str, realtime: bool = False, on_block=None) -> list[Detection]:
    from heron.runtime.audio import AudioFile

    audio = AudioFile(path)  # the same rule as `heron kws score` (runtime/audio.py)
    sr = audio.sample_rate
    stream = spotter.stream(sample_rate=sr)
    found: list[Detection] = []
    t0 = time.perf_counter()
    done = 0
    for block in audio.blocks(BLOCK_SECONDS):
        dets = stream.accept(block)
        found += dets
        done += len(block)
        if on_block:
            on_block(block, dets)
        if realtime:
            time.sleep(max(0.0, done / sr - (time.perf_counter() - t0)))
    dets = stream.flush()
    found += dets
    if on_block and dets:
        on_block(np.zeros(0, np.float32), dets)
    return found


def input_devices() -> list[dict]:
    try:
        import sounddevice as sd
    except ImportError as e:
        raise ImportError("the microphone needs sounddevice: pip install 'heron[mic]'") from e
    except OSError as e:  # PortAudio library missing
        raise RuntimeError(f"PortAudio is not available ({e}); apt-get install libportaudio2") from e
    return [d for d in sd.query_devices() if d["max_input_channels"] > 0]


def resolve_device(device, devices: list[dict]):
    """--device as given (an index, or a part of a device's name) -> what sounddevice takes; a name or index
    that no input device has is one line listing the input devices there are."""
    if device is None:
        return None
    text = str(device).strip()
    indexed = [(d.get("index", i), d) for i, d in enumerate(devices)]
    if text.isdigit() and any(i == int(text) for i, _ in indexed):
        return int(text)
    named = [i for i, d in indexed if text.lower() in str(d.get("name", "")).lower()]
    if len(named) == 1:
        return named[0]
    listing = ", ".join(f"{i} {d.get('name', '?')!r}" for i, d in indexed) or "none"
    why = "matches several input devices" if named else "is not an input device here"
    raise ValueError(f"--device {text!r} {why}; input devices: {listing}")


def listen_mic(spotter: KeywordSpotter, device=None, seconds: float | None = None, on_block=None) -> list[Detection]:
    """Capture 16 kHz mono from the default (or given) input device until Ctrl-C or `seconds`. Detection
    times count from the moment the microphone opened."""
    import sounddevice as sd

    devices = input_devices()
    if not devices:
        raise RuntimeError("no audio input device found (no microphone or sound card). On a headless "
                           "machine a PulseAudio null sink works as a virtual microphone; see the README.")
    device = resolve_device(device, devices)
    q: queue.Queue = queue.Queue()

    def callback(indata, frames, t, status):
        if status:
            print(f"audio: {status}", file=sys.stderr)
        q.put(indata[:, 0].copy())

    stream = spotter.stream()
    found: list[Detection] = []
    t_end = None if seconds is None else time.monotonic() + seconds
    with sd.InputStream(samplerate=spotter.sample_rate, channels=1, dtype="float32", device=device,
                        blocksize=int(spotter.sample_rate * BLOCK_SECONDS), callback=callback):
        try:
            while t_end is None or time.monotonic() < t_end:
                try:
                    block = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                dets = stream.accept(block)
                found += dets
                if on_block:
                    on_block(block, dets)
        except KeyboardInterrupt:
            pass
    return found


def _run(args) -> int:
    if args.file:
        from heron.runtime.audio import AudioFile

        audio = AudioFile(args.file)  # a file that cannot be streamed is refused before anything is printed
        if audio.channels > 1:
            print(f"note: {args.file} has {audio.channels} channels, mixed down to mono", file=sys.stderr)
    spotter = KeywordSpotter.load(args.model, int8=args.int8, sha256=args.model_sha256)
    for text in args.keyword:
        kw = spotter.enroll(text, sensitivity=args.sensitivity)
        guessed = describe_guesses(kw.pronunciation)
        if guessed:
            print(f"note: keyword {text!r}: {guessed}", file=sys.stderr)
        print(f"listening for {kw.name!r} ({' '.join(kw.pronunciation.phonemes)}), threshold {kw.threshold:.2f}",
              file=sys.stderr)
    tty = sys.stderr.isatty()

    def show(block, dets):
        if tty and args.meter and block.size:
            print("\r" + level_meter(block), end="", file=sys.stderr, flush=True)
        for d in dets:
            if tty and args.meter:
                print(file=sys.stderr)
            print(f"{d.keyword}\t{d.start_s:.2f}\t{d.end_s:.2f}\t{d.score:.3f}", flush=True)

    print("keyword\tstart_s\tend_s\tscore", flush=True)  # one header line, then one line per detection
    if args.mic:
        print("times count from when the microphone opened", file=sys.stderr)
        listen_mic(spotter, device=args.device, seconds=args.seconds, on_block=show)
    else:
        listen_file(spotter, args.file, realtime=args.realtime, on_block=show)
    return 0


def add_listen(sub, formatter) -> None:
    """`heron kws listen` (and the alias `heron listen`)."""
    p = sub.add_parser("listen", help="spot keywords live in a wav file or the microphone",
                       formatter_class=formatter)
    p.add_argument("--keyword", action="append", required=True, help="keyword text (repeatable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="audio file to stream (one of --file / --mic; no default)")
    src.add_argument("--mic", action="store_true", help="use the microphone")
    p.add_argument("--device", default=None, help="input device name or index (default: system default)")
    p.add_argument("--seconds", type=float, default=None, help="stop the microphone after this many seconds (default: until Ctrl-C)")
    p.add_argument("--realtime", action="store_true", help="stream the file at real-time speed")
    p.add_argument("--sensitivity", type=float, default=0.5, help="0 (strict) .. 1 (loose)")
    p.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    p.add_argument("--model-sha256", default=None, help=MODEL_SHA256_HELP)
    p.add_argument("--int8", action="store_true", help="use the int8 encoder")
    p.add_argument("--meter", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="show an input level meter on a terminal")
    p.set_defaults(func=_run)
