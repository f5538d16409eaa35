"""Export the shipped keyword model as mobile bundles: Core ML for iOS, ONNX (fp32 + int8) for Android.

    python demos/export_mobile.py --out out/mobile
Prints every file with its size and sha256 (the manifest holds the same, and loading verifies it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from heron.cli import main as heron


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/mobile")
    args = ap.parse_args(argv)
    rc = heron(["kws", "export", "--target", "all", "--out", args.out])
    if rc:
        return rc
    for target, platform in (("coreml", "iOS (Core ML)"), ("onnx", "Android (ONNX Runtime)")):
        man = json.loads((Path(args.out) / target / "manifest.json").read_text())
        print(f"\n{platform}: {Path(args.out) / target}")
        for f in man["files"].values():
            print(f"  {f['path']:24s} {f['bytes'] / 1e6:6.2f} MB  sha256 {f['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
