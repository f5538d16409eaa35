import pytest

from heron.runtime.phonemes import (INVENTORY, MAX_KEYWORD_PHONEMES, PHONEMES, WORD_BOUNDARY, levenshtein,
                                    normalize_text, number_to_words, pronounce)


def test_inventory_is_39_phonemes_plus_boundary():
    assert len(PHONEMES) == 39 and len(set(PHONEMES)) == 39
    assert INVENTORY[-1] == WORD_BOUNDARY and len(INVENTORY) == 40


@pytest.mark.parametrize("text,words", [
    ("Hey, Heron!", ["hey", "heron"]),
    ("  hey    HERON  ", ["hey", "heron"]),
    ("route 66", ["route", "sixty", "six"]),
    ("R2-D2", ["ar", "two", "dee", "two"]),
    ("hey 3PO", ["hey", "three", "pee", "oh"]),
    ("don't stop", ["don't", "stop"]),
    ("Café", ["cafe"]),
    ("1984", ["nineteen", "eighty", "four"]),
    ("007", ["zero", "zero", "seven"]),
])
def test_normalization(text, words):
    assert normalize_text(text) == words


def test_numbers():
    assert number_to_words(0) == "zero"
    assert number_to_words(66) == "sixty six"
    assert number_to_words(101) == "one hundred one"
    assert number_to_words(12000) == "twelve thousand"


def test_pronounce_known_words_stress_free():
    p = pronounce("hey computer")
    assert p.phonemes == ("HH", "EY", "K", "AH", "M", "P", "Y", "UW", "T", "ER")
    assert p.with_boundaries() == ("HH", "EY", WORD_BOUNDARY, "K", "AH", "M", "P", "Y", "UW", "T", "ER")
    assert all(ph in INVENTORY for ph in p.phonemes)


def test_out_of_dictionary_word_uses_neural_g2p():
    p = pronounce("snowboy")  # not in the CMU dictionary
    assert p.phonemes[:3] == ("S", "N", "OW")
    assert len(pronounce("zorblax").phonemes) >= 5


def test_case_and_punctuation_do_not_change_phonemes():
    assert pronounce("Hey, HERON!!").phonemes == pronounce("hey heron").phonemes


@pytest.mark.parametrize("bad", ["", "   ", "!!!", "'", "--"])
def test_empty_or_unpronounceable_raises(bad):
    with pytest.raises(ValueError, match="nothing pronounceable"):
        pronounce(bad)


def test_too_long_raises():
    with pytest.raises(ValueError, match="at most"):
        pronounce("one two three four five six seven")
    with pytest.raises(ValueError, match=f"at most {MAX_KEYWORD_PHONEMES} are supported"):
        pronounce("supercalifragilistic expialidocious")
    with pytest.raises(ValueError, match="characters"):
        pronounce("a" * 500)


def test_non_string_raises():
    with pytest.raises(TypeError):
        pronounce(None)  # type: ignore[arg-type]


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein(("A", "B"), ("A", "B")) == 0
    assert levenshtein((), ("A",)) == 1


@pytest.mark.parametrize("text, words", [
    ("hey 1,000", ("hey", "one", "thousand")),          # was "one zero zero zero"
    ("1,000,000 dollars", ("one", "million", "dollars")),
    ("hey \u0663", ("hey", "three")),                   # Arabic-Indic 3: was dropped ("hey")
    ("hey \u0969 heron", ("hey", "three", "heron")),    # Devanagari 3: was dropped
    ("a,b 1,2", ("a", "b", "one", "two")),              # a comma between words or digits is a pause
])
def test_numbers_are_said_as_people_say_them(text, words):
    assert pronounce(text).words == words


@pytest.mark.parametrize("text", ["hey \u00bd", "x\u00b2 heron"])
def test_numbers_without_one_reading_are_refused(text):
    with pytest.raises(ValueError, match="write such numbers in words"):
        pronounce(text)  # "½" used to become "one two"
