"""The one tokenizer of heron's language models: a `tokenizers.Tokenizer` (byte-level BPE) with the
end-of-turn id, built from a tokenizer.json (heron's own LMs, exported bundles) or from a GGUF file's
metadata (llama.cpp's vocabulary, merges and pre-tokenizer name). Streaming detokenization is
heron.runtime.lm.Detokenizer; heron's trained tokenizer (heron.models.lm.tokenizer) extends this class.
"""
from __future__ import annotations

from pathlib import Path


class Tokenizer:
    """encode / decode, the end-of-turn id, and the token table (to compare two tokenizers)."""

    def __init__(self, tok, eot_id: int | None = None):
        self._tok, self.eot_id = tok, eot_id

    @classmethod
    def from_file(cls, path: str | Path, eot_id: int | None = None) -> "Tokenizer":
        from heron.runtime.lm import load_tokenizer

        return cls(load_tokenizer(path), eot_id)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens (end of turn) are left out unless asked for."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=with_added_tokens)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))


# llama.cpp's pre-tokenizer names -> how the text is split before byte-level BPE. "gpt2"-style
# vocabularies not listed here use the GPT-2 regex; "smollm" also splits digits one by one (as
# SmolLM's own tokenizer.json and llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM do).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the spelling of byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_from_gguf(reader):
    """A GGUF file's (heron.runtime.gguf.GGUFFile) byte-level BPE vocabulary as a `tokenizers.Tokenizer`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = reader.metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer {kind!r} is not supported; heron reads byte-level BPE ('gpt2')")
    tokens = reader.metadata.get("tokenizer.ggml.tokens")
    merges = reader.metadata.get("tokenizer.ggml.merges")
    types = reader.metadata.get("tokenizer.ggml.token_type") or []
    if not tokens or merges is None:
        raise ValueError("GGUF metadata lacks the tokenizer's tokens or merges")
    alphabet = set(_bytes_to_unicode().values())
    spell = _bytes_to_unicode()
    vocab = {(t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF tokenizer: duplicate tokens in the vocabulary")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ValueError(f"GGUF tokenizer: malformed merge {m[:40]!r}")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    pre = reader.metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                                                     byte_level])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
               if ty == 3 and set(t) <= alphabet]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)
    if tok.get_vocab_size() != len(tokens):
        raise ValueError(f"GGUF tokenizer: {tok.get_vocab_size()} tokens after building, the file lists {len(tokens)}")
    return tok
