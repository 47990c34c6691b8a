"""Regular expressions a policy may contain, and the bound on what they may cost.

Two kinds of pattern live in a policy, and both are parsed here with the standard library's
regex parser before anything compiles them:

* **Deny patterns** are searched in record keys, values and headers, so a record's bytes
  (chosen by whoever writes to the OT topic) drive the matcher. Python's ``re`` backtracks,
  so a careless pattern can take time quadratic or exponential in the input. A deny pattern
  is accepted only if its worst case is linear in the scanned bytes times a small factor:

  - at most ``MAX_PATTERN_CHARS`` characters;
  - no backreferences, conditionals or lookaround;
  - no repeat inside a repeat (``(a+)+``, ``(ab{1,3})*``);
  - an unbounded repeat (``*``, ``+``, ``{n,}``) only of a single character class, and either
    last in the pattern, or preceded by something that cannot match its characters *and*
    followed by something that cannot either (so each run of such characters is entered
    from one start position and never re-divided): ``password\\s*[:=]\\s*\\S+`` passes,
    ``\\w+@\\w+`` does not (write ``[\\w.]{1,64}@\\w{1,64}``);
  - a bounded repeat counts at most ``MAX_BOUNDED_REPEAT``, and the bounded repeats (other
    than those followed by something they cannot match) and alternations multiply to at most
    ``MAX_BACKTRACK`` ways to match at one position.

  The engine additionally caps the bytes scanned per field (``deny_scan_bytes``); a larger
  field is a violation rather than a partial scan, so nothing hides past the cap.

  Patterns match bytes. A pattern written in ASCII is compiled as it stands (``\\xNN``
  escapes are bytes). A pattern that contains non-ASCII characters is read as text and
  rewritten so that each such character, alone or in a class, matches its UTF-8 bytes,
  which is what producers write; ``.``, ``\\w``, ``\\s``, ``\\d`` and negated classes still
  match one byte.

* **Topic patterns** (glob or regex) are matched against topic names, which Kafka limits to
  249 characters of ``[a-zA-Z0-9._-]``, so their cost is bounded anyway. They are turned into
  automata over that alphabet so that two rules can be checked for overlap exactly. A
  search too big to finish raises ``OverlapUndecidedError``: a pair that cannot be shown
  disjoint is never taken to be.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_PATTERN_CHARS = 256
MAX_BACKTRACK = 256
#: largest bounded repeat count in a deny pattern
MAX_BOUNDED_REPEAT = 1024
#: longest legal Kafka topic name
MAX_TOPIC_CHARS = 249
#: the characters Kafka allows in a topic name
TOPIC_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: states an automaton for one topic pattern may have; beyond it the pattern is refused
MAX_NFA_STATES = 4000
#: product states explored when deciding whether two rules overlap
MAX_OVERLAP_STATES = 200_000

_IGNORECASE = sre_c.SRE_FLAG_IGNORECASE
_DOTALL = sre_c.SRE_FLAG_DOTALL
_MAXREPEAT = sre_c.MAXREPEAT


class PatternError(ValueError):
    """A pattern is not valid, or is refused because of what it could cost."""


class OverlapUndecidedError(PatternError):
    """The overlap search reached ``MAX_OVERLAP_STATES`` without an answer either way."""


def is_topic_name(name: str) -> bool:
    """True if ``name`` is a legal Kafka topic name."""
    return _TOPIC_RE.fullmatch(name) is not None and name not in (".", "..")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None if it is one."""
    if not name:
        return "it is empty"
    if len(name) > MAX_TOPIC_CHARS:
        return f"longer than {MAX_TOPIC_CHARS} characters"
    if name in (".", ".."):
        return "'.' and '..' are reserved"
    bad = sorted(set(name) - set(TOPIC_ALPHABET))
    if bad:
        shown = "".join(bad[:10])
        return f"{shown!r} {'is' if len(bad) == 1 else 'are'} not one of [a-zA-Z0-9._-]"
    return None


# --- character classes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Alphabet:
    chars: tuple[int, ...]
    index: dict[int, int]

    @classmethod
    def of(cls, codes: Iterable[int]) -> _Alphabet:
        chars = tuple(codes)
        return cls(chars, {c: i for i, c in enumerate(chars)})

    @property
    def full(self) -> int:
        return (1 << len(self.chars)) - 1


_BYTES = _Alphabet.of(range(256))
_TOPICS = _Alphabet.of(ord(c) for c in TOPIC_ALPHABET)

_SPACE = frozenset(b" \t\n\r\f\v")
_DIGIT = frozenset(range(0x30, 0x3A))
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _category(code: Any, c: int) -> bool:
    name = str(code)
    if "DIGIT" in name:
        hit = c in _DIGIT
    elif "SPACE" in name:
        hit = c in _SPACE
    elif "WORD" in name:
        hit = c in _WORD
    elif "LINEBREAK" in name:
        hit = c == 0x0A
    else:
        raise PatternError(f"unsupported character category {name}")
    return not hit if "NOT" in name else hit


def _fold(c: int) -> tuple[int, ...]:
    if 0x41 <= c <= 0x5A:
        return (c, c + 0x20)
    if 0x61 <= c <= 0x7A:
        return (c, c - 0x20)
    return (c,)


def _char_matches(op: Any, av: Any, c: int, flags: int) -> bool:
    """Does one single-character item of a parsed pattern match code point ``c``?"""
    cands = _fold(c) if flags & _IGNORECASE else (c,)
    if op is sre_c.LITERAL:
        return av in cands
    if op is sre_c.NOT_LITERAL:
        return av not in cands
    if op is sre_c.ANY:
        return bool(flags & _DOTALL) or c != 0x0A
    if op is sre_c.IN:
        negate = False
        hit = False
        for iop, iav in av:
            if iop is sre_c.NEGATE:
                negate = True
            elif iop is sre_c.LITERAL:
                hit = hit or iav in cands
            elif iop is sre_c.RANGE:
                lo, hi = iav
                hit = hit or any(lo <= x <= hi for x in cands)
            elif iop is sre_c.CATEGORY:
                hit = hit or _category(iav, c)
            else:
                raise PatternError(f"unsupported item {iop} in a character class")
        return hit != negate
    raise PatternError(f"{op} is not a single character")


_SINGLE = (sre_c.LITERAL, sre_c.NOT_LITERAL, sre_c.ANY, sre_c.IN)


def _charset(op: Any, av: Any, flags: int, alpha: _Alphabet) -> int:
    mask = 0
    for i, c in enumerate(alpha.chars):
        if _char_matches(op, av, c, flags):
            mask |= 1 << i
    return mask


def _parse(pattern: str | bytes, what: str, limit: int | None = MAX_PATTERN_CHARS) -> Any:
    if limit is not None and len(pattern) > limit:
        raise PatternError(f"{what} is {len(pattern)} characters long, more than the limit {limit}")
    try:
        return sre_parse.parse(pattern, 0)
    except re.error as exc:
        raise PatternError(f"{what} {_show(pattern)} is not a valid regex: {exc}") from exc


def _show(pattern: str | bytes) -> str:
    text = pattern.decode("latin-1") if isinstance(pattern, bytes) else pattern
    return show_pattern(text)


def show_pattern(pattern: str) -> str:
    r"""A pattern quoted for a message, as it is written in a policy: ``'a\.b'``, not
    ``'a\\.b'`` as ``repr`` has it (which reads as a different regex). ``repr`` only
    for what could not be read back otherwise: a quote, a newline, a control character."""
    if pattern.isprintable() and "'" not in pattern:
        return f"'{pattern}'"
    return repr(pattern)


_REFUSED = {
    sre_c.GROUPREF: "a backreference",
    sre_c.GROUPREF_EXISTS: "a conditional group",
    sre_c.ASSERT: "a lookahead/lookbehind",
    sre_c.ASSERT_NOT: "a negative lookahead/lookbehind",
}
_REPEATS = (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT)


# --- deny patterns -------------------------------------------------------------------------


def compile_deny_pattern(pattern: str) -> re.Pattern[bytes]:
    """Check a deny pattern against the cost bound and compile it for bytes.

    The pattern is given as text and matched against raw bytes. An ASCII pattern is used as
    it stands (``\\xNN`` escapes are bytes); one with non-ASCII characters is rewritten so
    that they match their UTF-8 encoding (``utf8_deny_source``). The cost bound is checked
    on the bytes pattern that actually runs.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"deny pattern is {len(pattern)} characters long, more than the limit "
            f"{MAX_PATTERN_CHARS}"
        )
    raw = pattern.encode("ascii") if pattern.isascii() else utf8_deny_source(pattern)
    parsed = _parse(raw, "deny pattern", limit=None)
    checker = _DenyChecker(pattern, parsed.state.flags)
    ways = checker.sequence(list(parsed), parsed.state.flags, top=True)
    if ways > MAX_BACKTRACK:
        raise PatternError(
            f"deny pattern {show_pattern(pattern)} can match one position in about {ways} ways, more than "
            f"the limit {MAX_BACKTRACK}; narrow its bounded repeats or alternatives"
        )
    return re.compile(raw)


#: non-ASCII characters one class of a deny pattern may list (each becomes an alternative)
MAX_CLASS_NON_ASCII = 64

_FLAG_LETTERS = ((_IGNORECASE, b"i"), (sre_c.SRE_FLAG_MULTILINE, b"m"), (_DOTALL, b"s"))
_AT_SOURCE = {
    sre_c.AT_BEGINNING: b"^",
    sre_c.AT_BEGINNING_STRING: b"\\A",
    sre_c.AT_END: b"$",
    sre_c.AT_END_STRING: b"\\Z",
    sre_c.AT_BOUNDARY: b"\\b",
    sre_c.AT_NON_BOUNDARY: b"\\B",
}
_CATEGORY_SOURCE = {
    sre_c.CATEGORY_DIGIT: b"\\d",
    sre_c.CATEGORY_NOT_DIGIT: b"\\D",
    sre_c.CATEGORY_SPACE: b"\\s",
    sre_c.CATEGORY_NOT_SPACE: b"\\S",
    sre_c.CATEGORY_WORD: b"\\w",
    sre_c.CATEGORY_NOT_WORD: b"\\W",
}
_ATOMS = (*_SINGLE, sre_c.BRANCH, sre_c.SUBPATTERN, sre_c.ATOMIC_GROUP)
_BYTE_ESCAPE = re.compile(r"\\(?:x[89a-fA-F][0-9a-fA-F]|[23][0-7]{2})")


def utf8_deny_source(pattern: str) -> bytes:
    """The bytes regex that finds, in UTF-8 text, what the text regex ``pattern`` means.

    Each non-ASCII character becomes its UTF-8 byte sequence in a group (so a repeat
    applies to the whole character), a class listing non-ASCII characters becomes an
    alternation, and under ``(?i)`` a non-ASCII letter also matches its other cases.
    ``.``, ``\\w``, ``\\s``, ``\\d`` and negated classes keep their one-byte meaning, so a
    negated class cannot leave out a non-ASCII character. ``\\xNN`` escapes above
    ``\\x7f`` would be ambiguous here (a byte, or the character U+00NN?) and are refused.
    """
    # the backslash before the escape must not itself be escaped
    for m in _BYTE_ESCAPE.finditer(pattern):
        lead = len(pattern[: m.start()]) - len(pattern[: m.start()].rstrip("\\"))
        if lead % 2 == 0:
            raise PatternError(
                f"deny pattern {show_pattern(pattern)} mixes non-ASCII characters with \\xNN escapes of "
                f"bytes ({m.group()!r}); in a pattern with non-ASCII characters write the "
                "characters themselves (they match their UTF-8 bytes), or write the whole "
                "pattern in ASCII with \\xNN escapes of the UTF-8 bytes"
            )
    parsed = _parse(pattern, "deny pattern")
    flags = parsed.state.flags
    if flags & sre_c.SRE_FLAG_LOCALE:
        raise PatternError(
            f"deny pattern {show_pattern(pattern)} uses the LOCALE flag, which is not supported"
        )
    head = b"".join(letter for bit, letter in _FLAG_LETTERS if flags & bit)
    body = _Utf8Writer(pattern).seq(list(parsed), flags)
    return (b"(?" + head + b")" if head else b"") + body


def _case_variants(c: int) -> list[int]:
    """``c`` and the single characters it becomes in other cases (closed under the
    mapping, so final sigma, sigma and capital sigma all go together)."""
    found = {c}
    todo = [c]
    while todo:
        ch = chr(todo.pop())
        for other in (ch.lower(), ch.upper(), ch.title()):
            if len(other) == 1 and ord(other) not in found:
                found.add(ord(other))
                todo.append(ord(other))
    return sorted(found)


def _utf8_alternatives(chars: Iterable[int]) -> list[bytes]:
    return ["".join(f"\\x{b:02x}" for b in chr(c).encode()).encode() for c in chars]


class _Utf8Writer:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def fail(self, why: str) -> PatternError:
        return PatternError(f"deny pattern {show_pattern(self.pattern)} refused: {why}")

    def seq(self, items: list[tuple[Any, Any]], flags: int) -> bytes:
        return b"".join(self.item(op, av, flags) for op, av in items)

    def chars(self, codes: Iterable[int], flags: int) -> list[int]:
        out: set[int] = set()
        for c in codes:
            out.update(_case_variants(c) if flags & _IGNORECASE else (c,))
        return sorted(out)

    def item(self, op: Any, av: Any, flags: int) -> bytes:
        if op is sre_c.LITERAL:
            if av < 0x80:
                return f"\\x{av:02x}".encode()
            alts = _utf8_alternatives(self.chars([av], flags))
            return b"(?:" + b"|".join(alts) + b")"
        if op is sre_c.NOT_LITERAL:
            if av >= 0x80:
                raise self.fail(self._negated_non_ascii())
            return f"[^\\x{av:02x}]".encode()
        if op is sre_c.ANY:
            return b"."
        if op is sre_c.IN:
            return self.klass(av, flags)
        if op is sre_c.AT:
            if av not in _AT_SOURCE:
                raise self.fail(f"the anchor {av} is not supported")
            return _AT_SOURCE[av]
        if op is sre_c.BRANCH:
            return b"(?:" + b"|".join(self.seq(list(alt), flags) for alt in av[1]) + b")"
        if op is sre_c.SUBPATTERN:
            _group, add, delete, sub = av
            inner = self.seq(list(sub), (flags | add) & ~delete)
            on = b"".join(letter for bit, letter in _FLAG_LETTERS if add & bit)
            off = b"".join(letter for bit, letter in _FLAG_LETTERS if delete & bit)
            return b"(?" + on + (b"-" + off if off else b"") + b":" + inner + b")"
        if op is sre_c.ATOMIC_GROUP:
            return b"(?>" + self.seq(list(av), flags) + b")"
        if op in _REPEATS:
            lo, hi, body = av
            body = list(body)
            inner = self.seq(body, flags)
            # a single character, class or group is one atom already; keeping it bare keeps
            # `\s*` a repeat of one class for the cost check
            if len(body) != 1 or body[0][0] not in _ATOMS:
                inner = b"(?:" + inner + b")"
            count = f"{{{lo},}}" if hi == _MAXREPEAT else f"{{{lo},{hi}}}"
            lazy = (
                b"?" if op is sre_c.MIN_REPEAT else b"+" if op is sre_c.POSSESSIVE_REPEAT else b""
            )
            return inner + count.encode() + lazy
        if op in _REFUSED:
            raise self.fail(f"it uses {_REFUSED[op]}, which can make matching very slow")
        raise self.fail(f"it uses {op}, which is not supported")

    def klass(self, items: list[tuple[Any, Any]], flags: int) -> bytes:
        ascii_part: list[bytes] = []
        wide: list[int] = []
        negate = False
        for iop, iav in items:
            if iop is sre_c.NEGATE:
                negate = True
            elif iop is sre_c.LITERAL:
                if iav < 0x80:
                    ascii_part.append(f"\\x{iav:02x}".encode())
                else:
                    wide.append(iav)
            elif iop is sre_c.RANGE:
                lo, hi = iav
                if lo < 0x80:
                    ascii_part.append(f"\\x{lo:02x}-\\x{min(hi, 0x7F):02x}".encode())
                if hi >= 0x80:
                    first = max(lo, 0x80)
                    if hi - first + 1 > MAX_CLASS_NON_ASCII:
                        raise self.fail(
                            f"the non-ASCII range {chr(first)}-{chr(hi)} in a class covers "
                            f"{hi - first + 1} characters, more than the limit "
                            f"{MAX_CLASS_NON_ASCII}; list the characters that matter"
                        )
                    wide.extend(range(first, hi + 1))
            elif iop is sre_c.CATEGORY:
                if iav not in _CATEGORY_SOURCE:
                    raise self.fail(f"the class item {iav} is not supported")
                ascii_part.append(_CATEGORY_SOURCE[iav])
            else:
                raise self.fail(f"the class item {iop} is not supported")
        if negate:
            if wide:
                raise self.fail(self._negated_non_ascii())
            return b"[^" + b"".join(ascii_part) + b"]"
        alts = _utf8_alternatives(self.chars(wide, flags))
        if ascii_part:
            alts.insert(0, b"[" + b"".join(ascii_part) + b"]")
        if not alts:
            raise self.fail("it has an empty character class")
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    @staticmethod
    def _negated_non_ascii() -> str:
        return (
            "a negated class cannot leave out a non-ASCII character: patterns match bytes, "
            "and [^...] matches one byte; name what may follow instead"
        )


class _DenyChecker:
    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags

    def fail(self, why: str) -> PatternError:
        return PatternError(f"deny pattern {show_pattern(self.pattern)} refused: {why}")

    def sequence(self, items: list[tuple[Any, Any]], flags: int, *, top: bool) -> int:
        ways = 1
        for pos, (op, av) in enumerate(items):
            if op in _REFUSED:
                raise self.fail(f"it uses {_REFUSED[op]}, which can make matching very slow")
            if op in _REPEATS:
                lo, hi, body = av
                if _contains_repeat(list(body)):
                    raise self.fail(
                        "a repeat inside a repeat can take exponential time; flatten it"
                    )
                if hi == _MAXREPEAT:
                    self.unbounded(items, pos, lo, list(body), flags, top=top)
                    inner = self.sequence(list(body), flags, top=False)
                elif hi > MAX_BOUNDED_REPEAT:
                    raise self.fail(
                        f"a repeat of up to {hi} exceeds the limit {MAX_BOUNDED_REPEAT}; repeat "
                        "one character class with * or + next to characters it cannot match"
                    )
                elif self.settles(items, pos, list(body), flags, top=top):
                    inner = 1
                else:
                    inner = (hi - lo + 1) * self.sequence(list(body), flags, top=False)
                ways *= max(inner, 1)
            elif op is sre_c.BRANCH:
                total = 0
                for alt in av[1]:
                    total += self.sequence(list(alt), flags, top=False)
                ways *= max(total, 1)
            elif op is sre_c.SUBPATTERN:
                _group, add, delete, sub = av
                ways *= self.sequence(list(sub), (flags | add) & ~delete, top=False)
            elif op is sre_c.ATOMIC_GROUP:
                ways *= self.sequence(list(av), flags, top=False)
            if ways > MAX_BACKTRACK * 1024:
                break
        return ways

    def settles(
        self,
        items: list[tuple[Any, Any]],
        pos: int,
        body: list[tuple[Any, Any]],
        flags: int,
        *,
        top: bool,
    ) -> bool:
        """True if a bounded repeat of one class can end in only one place: it is last in
        the pattern, or what follows cannot match its characters."""
        if len(body) != 1 or body[0][0] not in _SINGLE:
            return False
        if top and pos == len(items) - 1:
            return True
        after = _set_after(items, pos, flags)
        return after is not None and not after & _charset(body[0][0], body[0][1], flags, _BYTES)

    def unbounded(
        self,
        items: list[tuple[Any, Any]],
        pos: int,
        lo: int,
        body: list[tuple[Any, Any]],
        flags: int,
        *,
        top: bool,
    ) -> None:
        if len(body) != 1 or body[0][0] not in _SINGLE:
            raise self.fail(
                "an unbounded repeat (*, +, {n,}) may only repeat one character class; "
                "use a bounded repeat such as {0,64}"
            )
        own = _charset(body[0][0], body[0][1], flags, _BYTES)
        if top and pos == len(items) - 1:
            return  # last in the pattern: the search succeeds as soon as the run is long enough
        before = _set_before(items, pos, flags)
        if before is None or before & own:
            raise self.fail(
                "an unbounded repeat must follow a character it cannot match itself (or end "
                "the pattern); otherwise a search is quadratic in the scanned bytes. Use a "
                "bounded repeat such as {1,64}"
            )
        after = _set_after(items, pos, flags)
        if after is None or after & own:
            raise self.fail(
                "an unbounded repeat must be followed by a character it cannot match itself "
                "(or end the pattern); otherwise matching backtracks through every split. Use "
                "a bounded repeat such as {1,64}"
            )


def _contains_repeat(items: list[tuple[Any, Any]]) -> bool:
    for op, av in items:
        if op in _REPEATS:
            return True
        if op is sre_c.SUBPATTERN and _contains_repeat(list(av[3])):
            return True
        if op is sre_c.ATOMIC_GROUP and _contains_repeat(list(av)):
            return True
        if op is sre_c.BRANCH and any(_contains_repeat(list(alt)) for alt in av[1]):
            return True
    return False


def _edge_set(op: Any, av: Any, flags: int, *, last: bool) -> tuple[int, bool] | None:
    """(characters, mandatory) that can end (``last``) or start one element of a pattern,
    or None if that cannot be told simply (nested repeats of groups, lookaround...)."""
    if op in _SINGLE:
        return _charset(op, av, flags, _BYTES), True
    if op in _REPEATS:
        lo, _hi, body = av
        body = list(body)
        if len(body) == 1 and body[0][0] in _SINGLE:
            return _charset(body[0][0], body[0][1], flags, _BYTES), lo >= 1
        return None
    if op is sre_c.SUBPATTERN:
        _group, add, delete, sub = av
        return _seq_edge(list(sub), (flags | add) & ~delete, last=last)
    if op is sre_c.BRANCH:
        acc = 0
        mandatory = True
        for alt in av[1]:
            one = _seq_edge(list(alt), flags, last=last)
            if one is None:
                return None
            acc |= one[0]
            mandatory = mandatory and one[1]
        return acc, mandatory
    return None


def _seq_edge(items: list[tuple[Any, Any]], flags: int, *, last: bool) -> tuple[int, bool] | None:
    acc = 0
    for op, av in reversed(items) if last else items:
        one = _edge_set(op, av, flags, last=last)
        if one is None:
            return None
        acc |= one[0]
        if one[1]:
            return acc, True
    return acc, False


def _set_before(items: list[tuple[Any, Any]], pos: int, flags: int) -> int | None:
    """Characters that can end the match just before ``items[pos]``, within its sequence."""
    edge = _seq_edge(items[:pos], flags, last=True)
    return edge[0] if edge is not None and edge[1] else None


def _set_after(items: list[tuple[Any, Any]], pos: int, flags: int) -> int | None:
    """Characters that can start the match just after ``items[pos]``, within its sequence."""
    edge = _seq_edge(items[pos + 1 :], flags, last=False)
    return edge[0] if edge is not None and edge[1] else None


# --- topic patterns ------------------------------------------------------------------------


def glob_to_regex(glob: str) -> str:
    """Translate a topic glob (``*``, ``?``, ``[abc]``, ``[!abc]``) into a regex.

    ``*`` matches any run of characters, dots included: Kafka topic names have no
    hierarchy, so ``plant.*`` matches ``plant.a.b`` too.
    """
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                raise PatternError(f"glob {show_pattern(glob)} has an unclosed '['")
            body = glob[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_topic_regex(pattern: str, what: str = "topic regex") -> re.Pattern[str]:
    """Check a topic regex (no backreferences or lookaround) and compile it."""
    parsed = _parse(pattern, what)
    _refuse_in_topic(list(parsed), pattern, what)
    return re.compile(pattern)


def _refuse_in_topic(items: list[tuple[Any, Any]], pattern: str, what: str) -> None:
    for op, av in items:
        if op in _REFUSED:
            raise PatternError(
                f"{what} {show_pattern(pattern)} uses {_REFUSED[op]}, which is not supported"
            )
        if op in _REPEATS:
            _refuse_in_topic(list(av[2]), pattern, what)
        elif op is sre_c.SUBPATTERN:
            _refuse_in_topic(list(av[3]), pattern, what)
        elif op is sre_c.ATOMIC_GROUP:
            _refuse_in_topic(list(av), pattern, what)
        elif op is sre_c.BRANCH:
            for alt in av[1]:
                _refuse_in_topic(list(alt), pattern, what)


#: leading positions ``TopicNFA.prefix_masks`` looks at
_PREFIX_DEPTH = 64


class TopicNFA:
    """A nondeterministic automaton over the topic alphabet, for one anchored pattern.

    Anchors and word boundaries are read as always true, which can only make the automaton
    accept more than the regex does: an overlap check built on it may warn about a pair
    that cannot really collide, but never misses one that can.
    """

    __slots__ = ("_prefix", "accept", "edges", "eps")

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []
        self.eps: list[list[int]] = []
        self.accept = -1
        self._prefix: tuple[int, ...] | None = None

    def prefix_masks(self) -> tuple[int, ...]:
        """Per position, the characters a matched topic may have there, for as many leading
        positions as every matched topic has (up to ``_PREFIX_DEPTH``): two automata whose
        masks are disjoint at some position match no topic in common."""
        if self._prefix is None:
            masks: list[int] = []
            states = self.closure([0])
            while len(masks) < _PREFIX_DEPTH and states and self.accept not in states:
                mask = 0
                nxt: list[int] = []
                for st in states:
                    for m, t in self.edges[st]:
                        mask |= m
                        nxt.append(t)
                masks.append(mask)
                states = self.closure(nxt)
            self._prefix = tuple(masks)
        return self._prefix

    @classmethod
    def from_regex(cls, pattern: str) -> TopicNFA:
        parsed = sre_parse.parse(pattern, 0)
        nfa = cls()
        start = nfa._new()
        end = nfa._seq(list(parsed), start, parsed.state.flags)
        nfa.accept = end
        return nfa

    @classmethod
    def from_exact(cls, name: str) -> TopicNFA:
        return cls.from_regex(re.escape(name))

    def _new(self) -> int:
        if len(self.edges) >= MAX_NFA_STATES:
            raise PatternError(
                f"topic pattern is too complex to check for overlaps (over {MAX_NFA_STATES} "
                "states); simplify its repeats"
            )
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def _seq(self, items: list[tuple[Any, Any]], start: int, flags: int) -> int:
        cur = start
        for op, av in items:
            cur = self._item(op, av, cur, flags)
        return cur

    def _item(self, op: Any, av: Any, cur: int, flags: int) -> int:
        if op in _SINGLE:
            nxt = self._new()
            self.edges[cur].append((_charset(op, av, flags, _TOPICS), nxt))
            return nxt
        if op is sre_c.SUBPATTERN:
            _group, add, delete, sub = av
            return self._seq(list(sub), cur, (flags | add) & ~delete)
        if op is sre_c.ATOMIC_GROUP:
            return self._seq(list(av), cur, flags)
        if op is sre_c.BRANCH:
            end = self._new()
            for alt in av[1]:
                s = self._new()
                self.eps[cur].append(s)
                self.eps[self._seq(list(alt), s, flags)].append(end)
            return end
        if op in _REPEATS:
            lo, hi, body = av
            body = list(body)
            lo = min(lo, MAX_TOPIC_CHARS + 1)
            for _ in range(lo):
                cur = self._seq(body, cur, flags)
            if hi == _MAXREPEAT:
                loop = self._new()
                self.eps[cur].append(loop)
                self.eps[self._seq(body, loop, flags)].append(loop)
                return loop
            end = self._new()
            self.eps[cur].append(end)
            for _ in range(min(hi, MAX_TOPIC_CHARS + 1) - lo):
                cur = self._seq(body, cur, flags)
                self.eps[cur].append(end)
            return end
        if op is sre_c.AT:
            return cur
        raise PatternError(f"topic pattern uses {op}, which is not supported")

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        stack = list(seen)
        while stack:
            s = stack.pop()
            for t in self.eps[s]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    def step(self, states: frozenset[int], bit: int) -> frozenset[int]:
        nxt = [t for s in states for mask, t in self.edges[s] if mask & bit]
        return self.closure(nxt) if nxt else frozenset()


def _classes(machines: Sequence[TopicNFA]) -> list[int]:
    """The topic characters split into classes no automaton tells apart, each as a bit
    mask over ``TOPIC_ALPHABET``, ordered by their first character. One character per
    class is enough to explore, which turns 65 steps per state into a handful."""
    classes = [_TOPICS.full]
    masks = {mask for m in machines for edges in m.edges for mask, _t in edges}
    for mask in masks:
        split = []
        for c in classes:
            inside, outside = c & mask, c & ~mask
            split += [x for x in (inside, outside) if x]
        classes = split
    return sorted(classes, key=lambda c: (c & -c).bit_length())


class _Dfa:
    """The subset construction of one automaton, built lazily and remembered."""

    __slots__ = ("cache", "nfa")

    def __init__(self, nfa: TopicNFA) -> None:
        self.nfa = nfa
        self.cache: dict[tuple[frozenset[int], int], frozenset[int]] = {}

    def step(self, states: frozenset[int], bit: int) -> frozenset[int]:
        key = (states, bit)
        got = self.cache.get(key)
        if got is None:
            got = self.cache[key] = self.nfa.step(states, bit)
        return got


def surely_disjoint(a: TopicNFA, b: TopicNFA) -> bool:
    """True when ``a`` and ``b`` can match no topic in common, told from their leading
    characters alone (names with different literal prefixes): a quick test before the
    product search, which False leaves to decide."""
    return any(x & y == 0 for x, y in zip(a.prefix_masks(), b.prefix_masks(), strict=False))


def find_common_topic(
    left: Sequence[TopicNFA],
    right: Sequence[TopicNFA],
    excluded: Sequence[TopicNFA] = (),
    *,
    budget: int | None = None,
) -> str | None:
    """A topic name matched by every automaton in ``left`` and ``right`` (typically one
    each) and by none in ``excluded``, or None if there is none.

    Breadth-first over the product of the subset constructions, so the name returned is a
    shortest one, which reads well in an error message. Raises ``OverlapUndecidedError``
    when the search reaches ``MAX_OVERLAP_STATES`` product states without an answer: the
    caller must then treat the pair as possibly overlapping. ``budget`` lowers that bound
    for a search whose answer is only advice.
    """
    machines = [_Dfa(m) for m in (*left, *right)]
    negative = [_Dfa(m) for m in excluded]
    budget = MAX_OVERLAP_STATES if budget is None else min(budget, MAX_OVERLAP_STATES)
    bits = [c & -c for c in _classes([*left, *right, *excluded])]
    chars = [TOPIC_ALPHABET[b.bit_length() - 1] for b in bits]
    start = (
        tuple(d.nfa.closure([0]) for d in machines),
        tuple(d.nfa.closure([0]) for d in negative),
    )
    seen = {start}
    queue: deque[tuple[tuple[tuple[frozenset[int], ...], tuple[frozenset[int], ...]], str]]
    queue = deque([(start, "")])
    while queue:
        (pos, neg), word = queue.popleft()
        if (
            word
            and all(d.nfa.accept in s for d, s in zip(machines, pos, strict=True))
            and not any(d.nfa.accept in s for d, s in zip(negative, neg, strict=True))
        ):
            return word
        if len(word) >= MAX_TOPIC_CHARS:
            continue
        for bit, ch in zip(bits, chars, strict=True):
            npos = tuple(d.step(s, bit) for d, s in zip(machines, pos, strict=True))
            if not all(npos):
                continue
            nneg = tuple(d.step(s, bit) for d, s in zip(negative, neg, strict=True))
            key = (npos, nneg)
            if key in seen:
                continue
            if len(seen) >= budget:
                raise OverlapUndecidedError(
                    f"the search gave up after {budget} states without finding a common "
                    "topic or ruling one out"
                )
            seen.add(key)
            queue.append((key, word + ch))
    return None


def matches_some_topic(nfa: TopicNFA) -> bool:
    """True if the automaton accepts some legal topic name (1 to 249 characters).

    Needs no subset construction: the states reachable by some word of each length are
    one set per length, so this is linear in the automaton times the longest name.
    """
    current = nfa.closure([0])
    for _length in range(MAX_TOPIC_CHARS):
        nxt = [t for s in current for mask, t in nfa.edges[s] if mask]
        if not nxt:
            return False
        current = nfa.closure(nxt)
        if nfa.accept in current:
            return True
    return False


# --- regex rules as globs (so that `diode policy allow` can list them under `except`) ------

#: globs one regex may expand to
MAX_REGEX_GLOBS = 32


def regex_as_globs(pattern: str, *, cover: bool = False) -> list[str] | None:
    """Globs that together match exactly the topics the topic regex ``pattern`` matches,
    or None if there are none (few enough) that can be shown to.

    With ``cover``, a part no glob can express exactly becomes ``*``, so the globs may
    match more than the regex; they are still checked to match every topic it does.
    """
    try:
        parsed = sre_parse.parse(pattern, 0)
        globs = _GlobWriter(cover).seq(list(parsed), parsed.state.flags)
    except (re.error, _NoGlobError):
        return None
    if globs is None:
        return None
    globs = list(dict.fromkeys(_squeeze(g) for g in globs))
    if not globs:
        return None
    try:
        regex = TopicNFA.from_regex(pattern)
        as_nfa = [TopicNFA.from_regex(glob_to_regex(g)) for g in globs]
        if find_common_topic([regex], [], as_nfa) is not None:
            return None  # a topic of the regex that no glob matches
        if not cover and any(find_common_topic([g], [], [regex]) is not None for g in as_nfa):
            return None  # a glob that matches more than the regex
    except PatternError:
        return None
    return globs


def _squeeze(glob: str) -> str:
    while "**" in glob:
        glob = glob.replace("**", "*")
    return glob


class _NoGlobError(Exception):
    """This part of a regex has no glob form."""


class _GlobWriter:
    def __init__(self, cover: bool) -> None:
        self.cover = cover

    def seq(self, items: list[tuple[Any, Any]], flags: int) -> list[str]:
        acc = [""]
        for op, av in items:
            alts = self.item(op, av, flags)
            acc = [a + b for a in acc for b in alts]
            if len(acc) > MAX_REGEX_GLOBS:
                raise _NoGlobError
        return acc

    def item(self, op: Any, av: Any, flags: int) -> list[str]:
        if op in _SINGLE:
            return self.single(op, av, flags)
        if op is sre_c.SUBPATTERN:
            _group, add, delete, sub = av
            return self.seq(list(sub), (flags | add) & ~delete)
        if op is sre_c.BRANCH:
            return [g for alt in av[1] for g in self.seq(list(alt), flags)]
        if op in _REPEATS:
            lo, hi, body = av
            body = list(body)
            if len(body) == 1 and body[0][0] in _SINGLE:
                one = self.single(body[0][0], body[0][1], flags)
                if hi == _MAXREPEAT and one == ["?"]:
                    return ["?" * lo + "*"]
            if hi == _MAXREPEAT or hi - lo + 1 > MAX_REGEX_GLOBS:
                if self.cover:
                    return ["*"]
                raise _NoGlobError
            inner = self.seq(body, flags)
            out: list[str] = []
            for n in range(lo, hi + 1):
                acc = [""]
                for _ in range(n):
                    acc = [a + b for a in acc for b in inner]
                    if len(acc) > MAX_REGEX_GLOBS:
                        raise _NoGlobError
                out += acc
                if len(out) > MAX_REGEX_GLOBS:
                    raise _NoGlobError
            return out
        raise _NoGlobError  # anchors, lookaround, backreferences: leave them to a person

    def single(self, op: Any, av: Any, flags: int) -> list[str]:
        mask = _charset(op, av, flags, _TOPICS)
        if mask == _TOPICS.full:
            return ["?"]
        chars = [c for i, c in enumerate(TOPIC_ALPHABET) if mask >> i & 1]
        if not chars:
            return []  # matches no topic character: this branch matches nothing
        if len(chars) == 1:
            return chars
        # a dash last is a plain character in a glob class; the rest have no meaning there
        dash = "-" if "-" in chars else ""
        return ["[" + _ranges([c for c in chars if c != "-"]) + dash + "]"]


def _ranges(chars: list[str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(chars):
        j = i
        while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
            j += 1
        out.append(chars[i] + "-" + chars[j] if j - i >= 2 else "".join(chars[i : j + 1]))
        i = j + 1
    return "".join(out)
