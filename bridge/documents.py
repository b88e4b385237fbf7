"""The bodies cache: each extension's dialog-info rendered once per change and per class of
watchers (which of its ringing calls they may pick up), never once per watcher."""

from __future__ import annotations

from collections.abc import Hashable

from bridge.dialoginfo import DialogInfoDocument, RenderSettings, render
from bridge.pickup import PickupPolicy
from bridge.tracker import CallTracker


class Documents:
    """The notifier's document source: each extension's state rendered once per change and
    variant (which of its ringing calls the watcher may pick up), never once per watcher."""

    def __init__(
        self, tracker: CallTracker, settings: RenderSettings, policy: PickupPolicy
    ) -> None:
        self.tracker = tracker
        self.settings = settings
        self.policy = policy
        # Per extension: its variants by the set of dialogs whose ids are shown; the key None
        # (every id) is the yardstick for "did anything change".
        self._rendered: dict[str, dict[frozenset[str] | None, DialogInfoDocument]] = {}
        # Per extension: the body each class of watchers gets (see PickupPolicy.class_of).
        self._by_class: dict[str, dict[Hashable, DialogInfoDocument]] = {}

    def resolve(self, user: str, watcher: str, domain: str = "") -> str | None:
        """The key a watcher's SUBSCRIBE names: the extension in its endpoint's context (one
        PBX: any ``domain``)."""
        return self.tracker.resolve(user, watcher)

    def knows(self, resource: str) -> bool:
        """Whether phones may watch this extension."""
        return self.tracker.watchable(resource)

    def document(self, resource: str, watcher: str) -> DialogInfoDocument:
        """The current body of an extension as this watcher may see it."""
        cls = self.policy.class_of(watcher)
        by_class = self._by_class.get(resource)
        if by_class is None:
            by_class = self._by_class[resource] = {}
        doc = by_class.get(cls)
        if doc is None:
            state = self.tracker.state(resource)
            pickable = [d for d in state.dialogs if d.pickup is not None]
            allowed = frozenset(
                d.id
                for d in pickable
                if d.pickup is not None and self.policy.allows(cls, d.pickup.endpoint, resource)
            )
            # Every id allowed is the same body as the yardstick: render it once.
            doc = by_class[cls] = self._variant(
                resource, None if len(allowed) == len(pickable) else allowed
            )
        return doc

    def _variant(self, resource: str, allowed: frozenset[str] | None) -> DialogInfoDocument:
        variants = self._rendered.setdefault(resource, {})
        doc = variants.get(allowed)
        if doc is None:
            state = self.tracker.state(resource)
            doc = variants[allowed] = render(state, self.settings, allowed)
            if None not in variants:  # the yardstick of changed(), for watched extensions
                variants[None] = render(state, self.settings)
        return doc

    def changed(self, exten: str) -> bool:
        """Forget the old renderings; True when the new state differs from the old one (or
        nothing was rendered), i.e. when watchers must be told."""
        self._by_class.pop(exten, None)
        old = self._rendered.pop(exten, {}).get(None)
        if old is None or not self.tracker.watchable(exten):
            return True
        new = self._variant(exten, None)
        return (new.prefix, new.suffix) != (old.prefix, old.suffix)

    def forget_all(self) -> None:
        """Drop every rendering (tracker, render settings or policy changed)."""
        self._rendered.clear()
        self._by_class.clear()
