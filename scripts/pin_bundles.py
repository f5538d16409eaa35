"""Rewrite heron/runtime/pinned.py with the identities of the bundles now in runtime/assets (run by the
build scripts right after they export a shipped bundle; a test checks that the two agree).

    .venv/bin/python scripts/pin_bundles.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "runtime" / "pinned.py"


def main() -> int:
    from heron.runtime.bundle import read_manifest

    text = PINNED.read_text()
    head = text[:text.index("SHIPPED = {")]
    ids = {}
    for name, kind in (("kws", "keyword-spotting"), ("lm-draft", "language-model"), ("draft-head-smollm2", "draft-head")):
        _, ids[name] = read_manifest(ROOT / "runtime" / "assets" / name, kind)
    body = "SHIPPED = {\n" + "".join(f'    "{k}": "{v}",\n' for k, v in ids.items()) + "}\n"
    PINNED.write_text(head + body)
    print(f"pinned {PINNED}: " + ", ".join(f"{k} {v[:16]}..." for k, v in ids.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
