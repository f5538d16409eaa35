"""The identities (sha256 of manifest.json) of the bundles heron ships, pinned in code.

A shipped bundle whose manifest was edited and whose manifest.sha256 was recomputed to match is refused
at load, naming both hashes: the checksum file beside a manifest only catches accidents, this catches
edits. scripts/build_default_model.sh rewrites this file when it ships a new bundle, and a test checks
that the shipped bundles match it. Other bundles can be pinned by their users:
`KeywordSpotter.load(path, sha256=...)`, `heron kws score --model PATH --model-sha256 ...`.
"""
SHIPPED = {
    "kws": "ef0106e306431f42d806870c662f46e71b5052aa5525f888e09feb38c44800b0",
    "lm-draft": "3f772500a20d0c5175d60cb487038db96f836a112e6ce07957c6717c25696a7a",
}
