"""Byte-level BPE tokenizer, trained by the project and saved next to the model (tokenizer.json).

Any byte string round-trips (byte-level pre-tokenizer), so no input is ever unknown. Special tokens:
end of text (document separator), padding, and mask tokens reserved for multi-token prediction.
"""
from __future__ import annotations

from pathlib import Path

EOT = "<|endoftext|>"
PAD = "<|pad|>"
N_MASK_TOKENS = 8
MASKS = [f"<|mask_{i}|>" for i in range(N_MASK_TOKENS)]
SPECIAL_TOKENS = [EOT, PAD, *MASKS]


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("the language models need the 'tokenizers' package: pip install tokenizers") from e
    return tokenizers


class Tokenizer:
    """Thin wrapper: encode/decode plus the ids of the special tokens."""

    def __init__(self, tok):
        self._tok = tok
        self.eot_id = tok.token_to_id(EOT)
        self.pad_id = tok.token_to_id(PAD)
        self.mask_ids = [tok.token_to_id(m) for m in MASKS]
        if self.eot_id is None or None in self.mask_ids:
            raise ValueError("tokenizer.json lacks heron's special tokens; was it trained by heron?")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}")
        try:
            return cls(_tokenizers().Tokenizer.from_file(str(path)))
        except Exception as e:  # the Rust side raises its own exception type
            if isinstance(e, (ImportError, ValueError)):
                raise
            raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from e

    @classmethod
    def train(cls, text: str, vocab_size: int = 4096) -> "Tokenizer":
        """Train on `text` (deterministic for a given text and vocabulary size)."""
        tk = _tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         show_progress=False)
        chunks = text.split("\n\n")
        tok.train_from_iterator(chunks, trainer=trainer)
        return cls(tok)
