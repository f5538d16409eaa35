"""Keyword vocabulary: words and 1-4 word phrases with phonemes, from text present on every machine.

The CMU dictionary has pronunciations but no frequencies, and a phrase list needs plausible word
sequences. Both come from English prose that ships with Python: the standard library's docstrings and
the pydoc topic pages. Word counts over that prose are the "frequency-ish" filter; phrases are runs
of consecutive words inside one sentence, so they read like things people say. Deterministic: the
files are read in sorted order and nothing is sampled here.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from heron.runtime.phonemes import MAX_KEYWORD_PHONEMES, levenshtein, word_to_phonemes, cmu_dictionary

VOCAB_VERSION = "1"
_SENTENCE_SPLIT = re.compile(r"[.!?;:()\[\]{}\n]+|\s-\s|,")
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")
# Short words that are real words; other 1-2 letter tokens in docstrings are mostly identifiers.
_SHORT_OK = {"a", "i", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no",
             "of", "oh", "on", "or", "so", "to", "up", "us", "we", "ok", "hi", "am"}


@dataclass(frozen=True)
class Phrase:
    text: str
    phonemes: tuple[str, ...]
    count: int

    @property
    def n_words(self) -> int:
        return len(self.text.split())


def corpus_sentences() -> list[str]:
    """English sentences from the standard library's docstrings and pydoc topics (lower case)."""
    texts: list[str] = []
    try:
        from pydoc_data.topics import topics

        texts.extend(topics[k] for k in sorted(topics))
    except ImportError:
        pass
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib).parts
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    sentences: list[str] = []
    for t in texts:
        for s in _SENTENCE_SPLIT.split(t.lower()):
            s = s.strip()
            if s:
                sentences.append(s)
    return sentences


def _is_word(tok: str, cmu) -> bool:
    if not _WORD.match(tok) or tok not in cmu:
        return False
    return len(tok) > 2 or tok in _SHORT_OK


def build_vocabulary(min_word_count: int = 3, min_phrase_count: int = 2, max_words: int = 4) -> list[Phrase]:
    """Phrases of 1..max_words words whose words are frequent dictionary words (sorted, deterministic)."""
    cmu = cmu_dictionary()
    sentences = corpus_sentences()
    words = Counter(tok for s in sentences for tok in s.split() if _is_word(tok, cmu))
    frequent = {w for w, c in words.items() if c >= min_word_count}
    phrases: Counter[str] = Counter()
    for s in sentences:
        toks = s.split()
        run: list[str] = []
        for tok in toks + [""]:
            if tok in frequent:
                run.append(tok)
                continue
            for n in range(2, max_words + 1):
                for i in range(len(run) - n + 1):
                    phrases[" ".join(run[i:i + n])] += 1
            run = []
    out = [Phrase(w, word_to_phonemes(w), c) for w, c in words.items() if w in frequent and len(w) >= 3]
    for p, c in phrases.items():
        if c < min_phrase_count:
            continue
        ph = tuple(x for w in p.split() for x in word_to_phonemes(w))
        if len(ph) <= MAX_KEYWORD_PHONEMES:
            out.append(Phrase(p, ph, c))
    out = [p for p in out if 2 <= len(p.phonemes) <= MAX_KEYWORD_PHONEMES]
    return sorted(out, key=lambda p: (-p.count, p.text))


def vocabulary_path() -> Path:
    """Where the default vocabulary is cached (built on first use, about 15 s)."""
    from heron.models.data.tts import cache_dir

    return cache_dir().parent / f"vocab-v{VOCAB_VERSION}.json"


def vocabulary(cache: bool = True) -> list[Phrase]:
    """The default vocabulary, cached as JSON under the heron cache folder."""
    path = vocabulary_path()
    if cache and path.exists():
        rows = json.loads(path.read_text())
        return [Phrase(r[0], tuple(r[1].split()), r[2]) for r in rows]
    phrases = build_vocabulary()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([[p.text, " ".join(p.phonemes), p.count] for p in phrases]))
        os.replace(tmp, path)
    return phrases


def nearest_by_phonemes(anchor: tuple[str, ...], candidates: list[tuple[str, ...]]) -> tuple[int, int]:
    """Index and distance of the candidate with the smallest non-zero phoneme edit distance."""
    best, best_d = -1, 10**9
    for i, c in enumerate(candidates):
        if abs(len(c) - len(anchor)) >= best_d:
            continue  # the length difference alone already rules it out
        d = levenshtein(anchor, c)
        if 0 < d < best_d:
            best, best_d = i, d
            if d == 1:
                break
    if best < 0:
        raise ValueError("no candidate differs from the anchor")
    return best, best_d
