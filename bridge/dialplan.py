"""Where Asterisk finds the hint a SUBSCRIBE names, told from the dialplan's shape (pure).

Asterisk (``res_pjsip_exten_state.c``) looks the extension up in the watcher endpoint's
``subscribe_context``, else its ``context``, with ``ast_get_hint``, i.e. ``pbx_find_extension``
(``main/pbx.c``): first the context's own extensions, then its includes in the order written,
each followed depth first before the next, a context already searched skipped (names compared
without case), at most ``AST_PBX_MAX_STACK`` (512) contexts. The first context holding a hint
for the extension wins; none is a 404. ``DialplanResolver.find`` walks the same way over the
includes AMI's ShowDialPlan lists and the hints ExtensionStateList names.

Pattern hints (FreePBX's DND and follow-me keys: ``_*76X.`` → ``Custom:DEVDND${EXTEN:3}``):
within one context an exact hint wins, else a matching pattern (the one with the longest literal
start, as Asterisk prefers the most specific); Asterisk then adds the exact hint with
``${EXTEN}``/``${EXTEN:offset[:length]}`` replaced, and so does the bridge (``expand_hint``).

Not followed, with reasons: a ``switch =>`` (Asterisk asks the switch module, e.g. Realtime; the
bridge cannot, so a switch is taken as answering no), the time window of a timed include
(``include => ctx,09:00-17:00,...`` is followed at any time). ``ignorepat`` only concerns dial
tone, not hints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_STACK = 512  # AST_PBX_MAX_STACK: the most contexts one lookup visits
_CLASSES = {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]"}
_EXTEN_VARIABLE = re.compile(r"\$\{EXTEN(?::(-?\d+)(?::(-?\d+))?)?\}")


def pattern_regex(pattern: str) -> re.Pattern[str] | None:
    """An Asterisk extension pattern (``_*76X.``) as a regular expression; None for a plain
    extension or a pattern that cannot be read."""
    if not pattern.startswith("_"):
        return None
    out, body, i = [], pattern[1:], 0
    while i < len(body):
        c = body[i]
        if c.upper() in _CLASSES:
            out.append(_CLASSES[c.upper()])
        elif c == ".":
            out.append(".+")
        elif c == "!":
            out.append(".*")
        elif c == "[":
            end = body.find("]", i)
            if end < 0:
                return None
            out.append("[" + re.sub(r"([\\^\]])", r"\\\1", body[i + 1 : end]) + "]")
            i = end
        elif c != "-":  # Asterisk ignores dashes in patterns
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _literal_start(pattern: str) -> int:
    """How many characters a pattern fixes before its first wildcard (more: more specific)."""
    for i, c in enumerate(pattern[1:]):
        if c.upper() in _CLASSES or c in ".![":
            return i
    return len(pattern) - 1


def expand_hint(hint: str, exten: str) -> str:
    """A pattern hint made exact for ``exten``: ``${EXTEN}`` and ``${EXTEN:offset[:length]}``
    replaced, as Asterisk does for the dialplan variable."""

    def value(m: re.Match[str]) -> str:
        offset = int(m.group(1) or 0)
        start = max(len(exten) + offset, 0) if offset < 0 else min(offset, len(exten))
        rest = exten[start:]
        if m.group(2) is None:
            return rest
        length = int(m.group(2))
        return rest[:length] if length >= 0 else rest[: max(len(rest) + length, 0)]

    return _EXTEN_VARIABLE.sub(value, hint)


def include_target(name: str) -> str:
    """The context an include names ("ext-local" of "ext-local,09:00-17:00,mon-fri,*,*")."""
    return name.partition(",")[0].strip()


class DialplanResolver:
    """The dialplan's includes and which contexts hold a hint for which extension."""

    def __init__(self) -> None:
        self._includes: dict[str, tuple[str, ...]] | None = None  # None: never listed (ARI)
        self._hinted: dict[str, dict[str, None]] = {}  # exten → contexts with its hint
        self._holders: set[str] = set()  # contexts holding any hint
        # context → its pattern hints, most specific first: (pattern, compiled, hint)
        self._patterns: dict[str, list[tuple[str, re.Pattern[str], str]]] = {}

    @property
    def includes_known(self) -> bool:
        """Whether the includes were listed (AMI); ARI offers no way to list them."""
        return self._includes is not None

    def set_dialplan(
        self,
        includes: Iterable[tuple[str, Iterable[str]]],
        pattern_hints: Iterable[tuple[str, str, str]] = (),
    ) -> bool:
        """Replace every context's includes and pattern hints; True when they changed."""
        new = {ctx: tuple(include_target(i) for i in incs) for ctx, incs in includes}
        new = {ctx: incs for ctx, incs in new.items() if incs}
        patterns: dict[str, list[tuple[str, re.Pattern[str], str]]] = {}
        for context, pattern, hint in pattern_hints:
            compiled = pattern_regex(pattern)
            if compiled is not None:
                patterns.setdefault(context, []).append((pattern, compiled, hint))
        for found in patterns.values():
            found.sort(key=lambda p: -_literal_start(p[0]))
        old = {c: [(p, h) for p, _, h in ps] for c, ps in self._patterns.items()}
        if new == self._includes and old == {c: [(p, h) for p, _, h in ps]
                                             for c, ps in patterns.items()}:  # fmt: skip
            return False
        self._includes, self._patterns = new, patterns
        self._holders |= set(patterns)
        return True

    def pattern_hint(self, context: str, exten: str) -> str | None:
        """The hint of the most specific pattern of ``context`` matching ``exten``, made
        exact for it; None when no pattern hint there matches."""
        for _, compiled, hint in self._patterns.get(context, ()):
            if compiled.fullmatch(exten):
                return expand_hint(hint, exten)
        return None

    def add_hint(self, context: str, exten: str) -> None:
        """Note that ``context`` holds a hint for ``exten``."""
        self._hinted.setdefault(exten, {})[context] = None
        self._holders.add(context)

    def holds_hints(self, context: str) -> bool:
        """Whether ``context`` itself holds any hint."""
        return context in self._holders

    def has_hint(self, context: str, exten: str) -> bool:
        """Whether ``context`` itself (not its includes) holds a hint for ``exten``."""
        return context in self._hinted.get(exten, {})

    def find(self, context: str, exten: str) -> str | None:
        """The context whose hint for ``exten`` Asterisk uses for a watcher in ``context``
        (module docstring); None when Asterisk would find none."""
        holders = self._hinted.get(exten, {})
        patterns = self._patterns
        if not holders and not patterns:
            return None

        def holds(ctx: str) -> bool:
            return ctx in holders or (ctx in patterns and self.pattern_hint(ctx, exten) is not None)

        includes = self._includes or {}
        seen: set[str] = set()
        # Depth first in the written order: a stack of iterators, one per context entered.
        if holds(context):
            return context
        seen.add(context.casefold())
        stack = [iter(includes.get(context, ()))]
        while stack:
            included = next(stack[-1], None)
            if included is None:
                stack.pop()
                continue
            folded = included.casefold()
            if folded in seen or len(seen) >= MAX_STACK:
                continue
            seen.add(folded)
            if holds(included):
                return included
            stack.append(iter(includes.get(included, ())))
        return None
