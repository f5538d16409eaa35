"""The identities (sha256 of manifest.json) of the bundles heron ships, pinned in code.

A shipped bundle whose manifest was edited and whose manifest.sha256 was recomputed to match is refused
at load, naming both hashes: the checksum file beside a manifest only catches accidents, this catches
edits. scripts/build_default_model.sh rewrites this file when it ships a new bundle, and a test checks
that the shipped bundles match it. Other bundles can be pinned by their users:
`KeywordSpotter.load(path, sha256=...)`, `heron kws score --model PATH --model-sha256 ...`.
"""
SHIPPED = {
    "kws": "d88a6530c842a1f2826b825e516abe753b4d3673c5e89bbef814d7eba2fd2779",
    "lm-draft": "66da2f604be16bea2691e6fa875abc09ee96cc2c0a37130b35b8684a70c1c83a",
    "draft-head-smollm2": "6d6c40ad72f0bc8cc8c38b96c8e18d3047e5378e6412230a0b391bf7bcf3d079",
}
