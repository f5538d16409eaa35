"""Byte-level BPE tokenizer, trained by the project and saved next to the model (tokenizer.json).

Any byte string round-trips (byte-level pre-tokenizer), so no input is ever unknown. Special tokens:
end of text (document separator), padding, and mask tokens reserved for multi-token prediction.
"""
from __future__ import annotations

from pathlib import Path

from heron.runtime.tokenizer import Tokenizer as RuntimeTokenizer

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


class Tokenizer(RuntimeTokenizer):
    """heron's trained tokenizer: the runtime tokenizer plus the ids of heron's special tokens."""

    def __init__(self, tok):
        super().__init__(tok, tok.token_to_id(EOT))
        self.pad_id = tok.token_to_id(PAD)
        self.mask_ids = [tok.token_to_id(m) for m in MASKS]
        if self.eot_id is None or None in self.mask_ids:
            raise ValueError("tokenizer.json lacks heron's special tokens; was it trained by heron?")

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
