"""In-process wake-ups for live event streams, and the signal that ends them at shutdown.

Every commit that appended events calls :meth:`EventFeed.notify` (it listens for ``Work.EVENTS``,
see :mod:`service.storage.announcements`); a stream takes
:meth:`EventFeed.changed` *before* it reads the log, so a commit that lands between its read and
its wait still wakes it. Nothing here polls: a stream with nothing new sleeps until woken, or
until its keep-alive is due.
"""

from __future__ import annotations

import anyio


class EventFeed:
    def __init__(self) -> None:
        # Created lazily: anyio events need a running event loop, and the feed is built with the
        # app, before the loop exists.
        self._changed: anyio.Event | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self) -> None:
        """Accept streams (again): called when the lifespan starts."""
        self._closed = False

    def notify(self) -> None:
        """The log may have grown: wake every waiting stream. Cheap; safe to call often."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def close(self) -> None:
        """End every stream: they finish their response cleanly instead of waiting forever."""
        self._closed = True
        self.notify()

    def changed(self) -> anyio.Event:
        """An event set by the next :meth:`notify` or :meth:`close` (already set once closed)."""
        if self._changed is None:
            self._changed = anyio.Event()
        if self._closed:
            self._changed.set()
        return self._changed
