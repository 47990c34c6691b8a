"""Regex cost bounds, topic globs, and the overlap search behind rule validation."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diode.policy import patterns
from diode.policy.patterns import (
    PatternError,
    TopicNFA,
    compile_deny_pattern,
    find_common_topic,
    glob_to_regex,
)

ACCEPTED = [
    r"(?i)password\s*[:=]\s*\S+",
    r"(?i)(password|passwd|secret)\s*[:=]",
    r"BEGIN [A-Z ]{0,20}PRIVATE KEY",
    r"\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}",
    r"AKIA[0-9A-Z]{16}",
    r"[\w.]{1,64}@\w{1,64}",
    r"token=\S+",
    r"y[^y]*y",
]

REFUSED = [
    (r"(a+)+b", "repeat inside a repeat"),
    (r"(a)x\1", "backreference"),
    (r"a(?!b)", "lookahead"),
    (r"(?<=a)b", "lookahead/lookbehind"),
    (r"(a)?(?(1)b|c)", "conditional"),
    (r"\w+@\w+", "quadratic"),
    (r"a.*b", "quadratic"),
    (r"=\S+$", "quadratic"),
    (r"x\s*\s*y", "backtracks"),
    (r"(ab)+c", "one character class"),
    (r"a{0,5000}", "exceeds the limit 1024"),
    (r"[a-z]{0,40}[a-z]{0,40}x", "ways"),
    ("€", "above U+00FF"),
    ("(", "not a valid regex"),
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_accepted_deny_patterns(pattern: str) -> None:
    assert isinstance(compile_deny_pattern(pattern), re.Pattern)


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_refused_deny_patterns(pattern: str, why: str) -> None:
    with pytest.raises(PatternError, match=re.escape(why)):
        compile_deny_pattern(pattern)


def test_deny_patterns_match_bytes() -> None:
    rx = compile_deny_pattern(r"(?i)password\s*[:=]")
    assert rx.search(b"PassWord : x") and not rx.search(b"pass word=")


NAMES = st.text(alphabet="ab.-1", min_size=1, max_size=8)
GLOBS = st.text(alphabet="ab.*?", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(GLOBS, NAMES)
def test_glob_agrees_with_fnmatchcase(glob: str, name: str) -> None:
    ours = re.fullmatch(glob_to_regex(glob), name) is not None
    assert ours == fnmatch.fnmatchcase(name, glob)


def test_glob_classes() -> None:
    assert re.fullmatch(glob_to_regex("l[0-3].[!x]"), "l2.y")
    assert not re.fullmatch(glob_to_regex("l[0-3].[!x]"), "l2.x")
    with pytest.raises(PatternError, match="unclosed"):
        glob_to_regex("a[bc")


@settings(max_examples=200, deadline=None)
@given(GLOBS, GLOBS, st.lists(GLOBS, max_size=2))
def test_common_topic_is_a_witness(a: str, b: str, excluded: list[str]) -> None:
    ra, rb = glob_to_regex(a), glob_to_regex(b)
    rex = [glob_to_regex(e) for e in excluded]
    word = find_common_topic(
        [TopicNFA.from_regex(ra)], [TopicNFA.from_regex(rb)], [TopicNFA.from_regex(r) for r in rex]
    )
    if word is not None:
        assert re.fullmatch(ra, word) and re.fullmatch(rb, word)
        assert not any(re.fullmatch(r, word) for r in rex)
    else:
        # no short topic over a small alphabet is in both and outside the exclusions
        for n in range(1, 5):
            for w in _words("ab.x", n):
                both = re.fullmatch(ra, w) and re.fullmatch(rb, w)
                assert not (both and not any(re.fullmatch(r, w) for r in rex)), w


def _words(alphabet: str, n: int) -> list[str]:
    out = [""]
    for _ in range(n):
        out = [w + c for w in out for c in alphabet]
    return out


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (r"plant\..*", r"plant\.(alarms|events)\..+", True),
        (r"ot\..*", r"it\..*", False),
        (r"a[0-9]{2,3}", r"a[0-9]", False),
        (r"a[0-9]{2,3}", r"a1[0-9]*", True),
        (r"(?i)PLANT\.x", r"plant\.X", True),
        (r"plant\.[^a-z].*", r"plant\.[a-z]+", False),
    ],
)
def test_regex_overlap(a: str, b: str, overlap: bool) -> None:
    word = find_common_topic([TopicNFA.from_regex(a)], [TopicNFA.from_regex(b)])
    assert (word is not None) == overlap
    if word is not None:
        assert re.fullmatch(a, word) and re.fullmatch(b, word)


def test_topic_regex_refuses_backreference() -> None:
    with pytest.raises(PatternError, match="backreference"):
        patterns.compile_topic_regex(r"(a)\1")


def test_topic_names() -> None:
    assert patterns.is_topic_name("plant.a_b-1")
    for bad in ("", ".", "..", "a b", "x" * 250, "ümlaut"):
        assert not patterns.is_topic_name(bad)
