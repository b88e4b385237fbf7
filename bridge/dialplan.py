"""Where Asterisk finds the hint a SUBSCRIBE names, told from the dialplan's shape (pure).

Asterisk (``res_pjsip_exten_state.c``) looks the extension up in the watcher endpoint's
``subscribe_context``, else its ``context``, with ``ast_get_hint``, i.e. ``pbx_find_extension``
(``main/pbx.c``): first the context's own extensions, then its includes in the order written,
each followed depth first before the next, a context already searched skipped (names compared
without case), at most ``AST_PBX_MAX_STACK`` (512) contexts. The first context holding a hint
for the extension wins; none is a 404. ``DialplanResolver.find`` walks the same way over the
includes AMI's ShowDialPlan lists and the hints ExtensionStateList names.

Not followed, with reasons: a ``switch =>`` (Asterisk asks the switch module, e.g. Realtime; the
bridge cannot, so a switch is taken as answering no), the time window of a timed include
(``include => ctx,09:00-17:00,...`` is followed at any time), pattern hints (``_2XX,hint``;
FreePBX writes one hint per extension). ``ignorepat`` only concerns dial tone, not hints.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_STACK = 512  # AST_PBX_MAX_STACK: the most contexts one lookup visits


def include_target(name: str) -> str:
    """The context an include names ("ext-local" of "ext-local,09:00-17:00,mon-fri,*,*")."""
    return name.partition(",")[0].strip()


class DialplanResolver:
    """The dialplan's includes and which contexts hold a hint for which extension."""

    def __init__(self) -> None:
        self._includes: dict[str, tuple[str, ...]] | None = None  # None: never listed (ARI)
        self._hinted: dict[str, dict[str, None]] = {}  # exten → contexts with its hint
        self._holders: set[str] = set()  # contexts holding any hint

    @property
    def includes_known(self) -> bool:
        """Whether the includes were listed (AMI); ARI offers no way to list them."""
        return self._includes is not None

    def set_includes(self, includes: Iterable[tuple[str, Iterable[str]]]) -> bool:
        """Replace every context's includes; True when they changed."""
        new = {ctx: tuple(include_target(i) for i in incs) for ctx, incs in includes}
        new = {ctx: incs for ctx, incs in new.items() if incs}
        if new == self._includes:
            return False
        self._includes = new
        return True

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
        holders = self._hinted.get(exten)
        if not holders:
            return None
        includes = self._includes or {}
        seen: set[str] = set()
        # Depth first in the written order: a stack of iterators, one per context entered.
        if context in holders:
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
            if included in holders:
                return included
            stack.append(iter(includes.get(included, ())))
        return None
