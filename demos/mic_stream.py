"""Live keyword spotting from the microphone, with an input level meter.

    python demos/mic_stream.py "hey heron"               # microphone (Ctrl-C to stop)
    python demos/mic_stream.py "hey heron" --file x.wav  # stream a wav in real time instead
Needs `pip install heron[mic]` and an input device; says so clearly when there is none.
"""
from __future__ import annotations

import argparse
import sys

import heron
from heron.listen import level_meter, listen_file, listen_mic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("keyword", nargs="?", default="hey heron")
    ap.add_argument("--file", default=None, help="stream this wav in real time instead of the microphone")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (microphone)")
    ap.add_argument("--device", default=None, help="input device")
    args = ap.parse_args(argv)

    spotter = heron.KeywordSpotter.load()
    kw = spotter.enroll(args.keyword)
    print(f"listening for {kw.name!r} ...", flush=True)

    def show(block, dets):
        if block.size and sys.stdout.isatty():
            print("\r" + level_meter(block), end="", flush=True)
        for d in dets:
            print(f"\n*** {d.keyword!r} at {d.start_s:.2f}-{d.end_s:.2f} s (score {d.score:.2f})", flush=True)

    try:
        if args.file:
            listen_file(spotter, args.file, realtime=True, on_block=show)
        else:
            listen_mic(spotter, device=args.device, seconds=args.seconds, on_block=show)
    except (RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
