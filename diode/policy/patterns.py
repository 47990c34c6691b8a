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

* **Topic patterns** (glob or regex) are matched against topic names, which Kafka limits to
  249 characters of ``[a-zA-Z0-9._-]``, so their cost is bounded anyway. They are turned into
  automata over that alphabet so that two rules can be checked for overlap exactly.
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


def is_topic_name(name: str) -> bool:
    """True if ``name`` is a legal Kafka topic name."""
    return _TOPIC_RE.fullmatch(name) is not None and name not in (".", "..")


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


def _parse(pattern: str | bytes, what: str) -> Any:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"{what} is {len(pattern)} characters long, more than the limit {MAX_PATTERN_CHARS}"
        )
    try:
        return sre_parse.parse(pattern, 0)
    except re.error as exc:
        raise PatternError(f"{what} {_show(pattern)} is not a valid regex: {exc}") from exc


def _show(pattern: str | bytes) -> str:
    text = pattern.decode("latin-1") if isinstance(pattern, bytes) else pattern
    return repr(text)


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

    The pattern is given as text and matched against raw bytes; characters above U+00FF
    cannot occur in a byte pattern and are refused.
    """
    try:
        raw = pattern.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise PatternError(
            f"deny pattern {pattern!r} has a character above U+00FF; patterns match raw bytes, "
            "write non-ASCII text as \\xNN escapes of its UTF-8 bytes"
        ) from exc
    parsed = _parse(raw, "deny pattern")
    checker = _DenyChecker(pattern, parsed.state.flags)
    ways = checker.sequence(list(parsed), parsed.state.flags, top=True)
    if ways > MAX_BACKTRACK:
        raise PatternError(
            f"deny pattern {pattern!r} can match one position in about {ways} ways, more than "
            f"the limit {MAX_BACKTRACK}; narrow its bounded repeats or alternatives"
        )
    return re.compile(raw)


class _DenyChecker:
    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags

    def fail(self, why: str) -> PatternError:
        return PatternError(f"deny pattern {self.pattern!r} refused: {why}")

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
                raise PatternError(f"glob {glob!r} has an unclosed '['")
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
            raise PatternError(f"{what} {pattern!r} uses {_REFUSED[op]}, which is not supported")
        if op in _REPEATS:
            _refuse_in_topic(list(av[2]), pattern, what)
        elif op is sre_c.SUBPATTERN:
            _refuse_in_topic(list(av[3]), pattern, what)
        elif op is sre_c.ATOMIC_GROUP:
            _refuse_in_topic(list(av), pattern, what)
        elif op is sre_c.BRANCH:
            for alt in av[1]:
                _refuse_in_topic(list(alt), pattern, what)


class TopicNFA:
    """A nondeterministic automaton over the topic alphabet, for one anchored pattern.

    Anchors and word boundaries are read as always true, which can only make the automaton
    accept more than the regex does: an overlap check built on it may warn about a pair
    that cannot really collide, but never misses one that can.
    """

    __slots__ = ("accept", "edges", "eps")

    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int]]] = []
        self.eps: list[list[int]] = []
        self.accept = -1

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


def find_common_topic(
    left: Sequence[TopicNFA],
    right: Sequence[TopicNFA],
    excluded: Sequence[TopicNFA] = (),
) -> str | None:
    """A topic name matched by every automaton in ``left`` and ``right`` (typically one
    each) and by none in ``excluded``, or None if there is none (or the search is too big).

    Breadth-first over the product of the subset constructions, so the name returned is a
    shortest one, which reads well in an error message.
    """
    machines = list(left) + list(right)
    start = (
        tuple(m.closure([0]) for m in machines),
        tuple(m.closure([0]) for m in excluded),
    )
    seen = {start}
    queue: deque[tuple[tuple[tuple[frozenset[int], ...], tuple[frozenset[int], ...]], str]]
    queue = deque([(start, "")])
    while queue:
        (pos, neg), word = queue.popleft()
        if (
            word
            and all(m.accept in s for m, s in zip(machines, pos, strict=True))
            and not any(m.accept in s for m, s in zip(excluded, neg, strict=True))
        ):
            return word
        if len(word) >= MAX_TOPIC_CHARS:
            continue
        for i, ch in enumerate(TOPIC_ALPHABET):
            bit = 1 << i
            npos = tuple(m.step(s, bit) for m, s in zip(machines, pos, strict=True))
            if not all(npos):
                continue
            nneg = tuple(m.step(s, bit) for m, s in zip(excluded, neg, strict=True))
            key = (npos, nneg)
            if key in seen:
                continue
            if len(seen) >= MAX_OVERLAP_STATES:
                return None
            seen.add(key)
            queue.append((key, word + ch))
    return None
