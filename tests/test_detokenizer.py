"""Streaming detokenization: the increments add up to the whole decoded text for every split of a
multi-byte character across tokens, with a bounded window (O(1) work and memory per token)."""
from pathlib import Path

import numpy as np
import pytest

from heron.runtime.lm import Detokenizer
from heron.runtime.tokenizer import Tokenizer

TEXTS = ["def reverse(s):\n    return s[::-1]\n", "naïve café — ünïcödé ✓ 😀🎉 日本語のテキスト", "1234567 + 89 = ?",
         "   spaces\t\ttabs\n\n", "<|endoftext|> after a special token"]
ROOT = Path(__file__).resolve().parents[1]


def _tokenizers():
    toks = [("lm-nano", Tokenizer.from_file(ROOT / "models/weights/lm-nano/tokenizer.json"))]
    try:
        from heron.paths import named_lm_path
        from heron.runtime.gguf import GGUFFile
        from heron.runtime.tokenizer import tokenizer_from_gguf

        toks.append(("smollm2", Tokenizer(tokenizer_from_gguf(GGUFFile(named_lm_path("smollm2"))))))
    except (FileNotFoundError, ValueError, ImportError):
        pass
    return toks


@pytest.mark.parametrize("name,tok", _tokenizers(), ids=lambda x: x if isinstance(x, str) else "")
def test_increments_add_up_to_the_decoded_text(name, tok):
    rng = np.random.default_rng(0)
    for text in TEXTS:
        ids = tok.encode(text)
        for cut in sorted({0, 1, len(ids) // 2, len(ids) - 1, int(rng.integers(len(ids)))}):
            prompt, rest = ids[:cut], ids[cut:]
            d = Detokenizer(tok.decode, prompt)
            pieces = [d.push(i) for i in rest]
            assert "".join(pieces) == tok.decode(ids)[len(tok.decode(prompt)):], (name, text, cut)
            assert not any("\ufffd" in p for p in pieces)
            assert len(d.ids) <= Detokenizer.CONTEXT + 8  # the window stays small


def test_a_character_split_over_tokens_is_held_back_until_complete():
    tok = Tokenizer.from_file(ROOT / "models/weights/lm-nano/tokenizer.json")
    ids = tok.encode("😀")
    assert len(ids) > 1  # a byte-level vocabulary of 4096 spells an emoji in pieces
    d = Detokenizer(tok.decode, [])
    pieces = [d.push(i) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "😀"
    assert Detokenizer(None, [1, 2]).push(3) == ""
