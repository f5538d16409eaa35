"""The identities (sha256 of manifest.json) of the bundles heron ships, pinned in code.

A shipped bundle whose manifest was edited and whose manifest.sha256 was recomputed to match is refused
at load, naming both hashes: the checksum file beside a manifest only catches accidents, this catches
edits. scripts/build_default_model.sh rewrites this file when it ships a new bundle, and a test checks
that the shipped bundles match it. Other bundles can be pinned by their users:
`KeywordSpotter.load(path, sha256=...)`, `heron kws score --model PATH --model-sha256 ...`.
"""
SHIPPED = {
    "kws": "b0d6dcc13b1d39165fc1113681e1fb32eeacd669534eddfe19144beab5d89e25",
    "lm-draft": "66da2f604be16bea2691e6fa875abc09ee96cc2c0a37130b35b8684a70c1c83a",
}
