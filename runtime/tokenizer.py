"""The one tokenizer of heron's language models: a `tokenizers.Tokenizer` (byte-level BPE) with the
end-of-turn id, built from a tokenizer.json (heron's own LMs, exported bundles) or from a GGUF file's
metadata (llama.cpp's vocabulary, merges and pre-tokenizer name). Streaming detokenization is
heron.runtime.lm.Detokenizer; heron's trained tokenizer (heron.models.lm.tokenizer) extends this class.
"""
from __future__ import annotations

from pathlib import Path


# special tokens that end a turn or a text in the chat formats heron meets (ChatML, Llama 3, Gemma, Phi,
# sentencepiece): generation stops at any of them that the vocabulary holds as a special token
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>",
              "<|end|>", "</s>")


class Tokenizer:
    """encode / decode, the end-of-turn id, the set of ids that end generation, and the token table
    (to compare two tokenizers).

    eot_id: the model's own end token (heron's LMs separate training texts with it; a GGUF file's
    eos id). end_ids: every id that ends a turn: eot_id, `extra_end_ids` (a GGUF file's eot / eom
    ids) and the END_TOKENS the vocabulary holds as special tokens (SmolLM2's chat turn ends with
    <|im_end|>, a plain text with <|endoftext|>)."""

    def __init__(self, tok, eot_id: int | None = None, extra_end_ids: tuple[int, ...] = ()):
        self._tok, self.eot_id = tok, eot_id
        special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        ends = {tok.token_to_id(t) for t in END_TOKENS if t in special}
        ends.update(i for i in (eot_id, *extra_end_ids) if i is not None)
        bad = [i for i in ends if not 0 <= i < tok.get_vocab_size()]
        if bad:
            raise ValueError(f"end-of-turn ids {sorted(bad)} are outside the vocabulary of {tok.get_vocab_size()} tokens")
        self.end_ids: frozenset[int] = frozenset(ends)

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


def vocabulary_record(vocab_size: int, tok=None) -> dict:
    """What a model's token ids mean, for files made for one model (a draft, an MTP adapter, an exit
    head): the logit width and, given the tokenizer (heron's or a `tokenizers.Tokenizer`), its size and
    the sha256 of its token -> id table."""
    import hashlib
    import json

    rec = {"logits": int(vocab_size), "tokens": None, "sha256": None}
    if tok is not None:
        table = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: (kv[1], kv[0]))
        rec["tokens"] = len(table)
        rec["sha256"] = hashlib.sha256(json.dumps(table, ensure_ascii=False).encode("utf-8")).hexdigest()
    return rec


def require_same_vocabulary(what: str, rec: dict, target_what: str, target_rec: dict) -> None:
    """Speculation and adapters read the target's token ids: both records must mean the same tokens.
    Refuses, naming both, when the logit widths differ or both tokenizers are known and differ."""
    for name, r in ((what, rec), (target_what, target_rec)):
        if not (isinstance(r, dict) and isinstance(r.get("logits"), int) and isinstance(r.get("sha256"), (str, type(None)))
                and isinstance(r.get("tokens"), (int, type(None)))):
            raise ValueError(f"{name}: its vocabulary record is malformed")

    def describe(name, r):
        tok = f", a tokenizer of {r['tokens']} tokens (sha256 {r['sha256'][:12]})" if r.get("sha256") else ""
        return f"{name}: {r['logits']} logits{tok}"

    if rec["logits"] != target_rec["logits"] or (rec.get("sha256") and target_rec.get("sha256")
                                                 and rec["sha256"] != target_rec["sha256"]):
        raise ValueError(f"{describe(what, rec)}; {describe(target_what, target_rec)}: "
                         "it was made for another tokenizer than the target's")


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
