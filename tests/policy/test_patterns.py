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


REGEXES = st.sampled_from(
    [r"plant\.a.*", r"plant\.ab?", r"plant\.(a|b)x", r"pl[a-z]+\.b", r"(?i)PLANT\.A", r"p.*"]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(GLOBS.map(glob_to_regex), REGEXES), st.one_of(GLOBS.map(glob_to_regex), REGEXES))
def test_surely_disjoint_never_hides_a_common_topic(a: str, b: str) -> None:
    """The quick prefix test may only rule out pairs the full search rules out too."""
    na, nb = TopicNFA.from_regex(a), TopicNFA.from_regex(b)
    if patterns.surely_disjoint(na, nb):
        assert find_common_topic([na], [nb]) is None


def test_surely_disjoint_tells_names_apart_by_their_prefix() -> None:
    a = TopicNFA.from_exact("plant.line12.telemetry")
    b = TopicNFA.from_regex(glob_to_regex("plant.line1.*"))
    c = TopicNFA.from_regex(glob_to_regex("plant.line1*"))
    assert patterns.surely_disjoint(a, b)
    assert not patterns.surely_disjoint(a, c)  # line12... matches line1*
    assert find_common_topic([a], [c]) == "plant.line12.telemetry"


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


# --- an overlap search that gives up must say so ---------------------------------------------


def test_overlap_search_that_gives_up_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # these overlap ('ab' followed by 14 characters) but the shortest witness lies deeper
    # than a small search budget reaches
    monkeypatch.setattr(patterns, "MAX_OVERLAP_STATES", 500)
    a, b = TopicNFA.from_regex(r".*a.{15}"), TopicNFA.from_regex(r".*b.{14}")
    with pytest.raises(patterns.OverlapUndecidedError, match="500"):
        find_common_topic([a], [b])


def test_overlap_search_finds_deep_witnesses_within_the_real_budget() -> None:
    a, b = TopicNFA.from_regex(r".*a.{9}"), TopicNFA.from_regex(r".*b.{8}")
    word = find_common_topic([a], [b])
    assert word is not None and re.fullmatch(r".*a.{9}", word) and re.fullmatch(r".*b.{8}", word)


def test_emptiness_needs_no_product_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "MAX_OVERLAP_STATES", 10)
    assert patterns.matches_some_topic(TopicNFA.from_regex(r".*a.{15}"))
    assert not patterns.matches_some_topic(TopicNFA.from_regex(r"a/b"))
    assert not patterns.matches_some_topic(TopicNFA.from_regex(r"a{250}"))
    assert patterns.matches_some_topic(TopicNFA.from_regex(r"a{249}"))


# --- non-ASCII in deny patterns matches UTF-8 ------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "hits", "misses"),
    [
        ("Passwort:ü", ["Passwort:ü", "x Passwort:ü y"], ["Passwort:u", "Passwort:Ü"]),
        ("(?i)passwort:ü", ["PASSWORT:Ü", "passwort:ü"], ["passwort:u"]),
        ("Пароль", ["мой Пароль: 1"], ["пароль"]),
        ("(?i)пароль", ["ПАРОЛЬ", "Пароль"], ["parol"]),
        ("[äöü]x", ["äx", "üx"], ["ax", "x"]),
        ("k[a-zä]{1,3}se", ["käse", "kase"], ["kse", "kÄse"]),
        ("ü{2}", ["üü"], ["ü", "üx"]),
        ("grüße€", ["grüße€"], ["grüsse€"]),
        (r"Passw\xc3\xb6rter", ["Passwörter"], ["Passworter"]),
    ],
)
def test_non_ascii_deny_patterns_match_utf8(
    pattern: str, hits: list[str], misses: list[str]
) -> None:
    rx = compile_deny_pattern(pattern)
    for text in hits:
        assert rx.search(text.encode()), (pattern, text)
    for text in misses:
        assert not rx.search(text.encode()), (pattern, text)


def test_non_ascii_deny_pattern_does_not_match_latin1_bytes() -> None:
    rx = compile_deny_pattern("Passwort:ü")
    assert not rx.search("Passwort:ü".encode("latin-1"))


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("[^ü]x", "negated"),
        ("[^a]ü", None),
        ("ü[\u0100-\u2000]", "non-ASCII range"),
        ("ä\\xfc", "\\xNN escapes"),
    ],
)
def test_non_ascii_deny_pattern_limits(pattern: str, why: str | None) -> None:
    if why is None:
        assert compile_deny_pattern(pattern).search("xü".encode())
    else:
        with pytest.raises(PatternError, match=re.escape(why)):
            compile_deny_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "shown"),
    [
        (r"plant\.a", r"'plant\.a'"),  # as written in the policy, not with doubled backslashes
        ("it's", '"it\'s"'),
        ("a\nb", "'a\\nb'"),
    ],
)
def test_patterns_are_shown_as_written(pattern: str, shown: str) -> None:
    assert patterns.show_pattern(pattern) == shown
