"""The Server-Sent Events wire format (WHATWG HTML, section 9.2): writing messages, and reading them
back.

The service writes with :func:`message` and :func:`comment`; the CLI and tests read with
:class:`Reader`, which follows the specification's parsing rules (so a browser's ``EventSource``
would see the same messages).
"""

from __future__ import annotations

from dataclasses import dataclass

# Response headers of a stream.
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    # Tell nginx-style proxies not to buffer: an event must reach the client when it happens.
    "X-Accel-Buffering": "no",
}


def message(
    *,
    data: str | None = None,
    event: str | None = None,
    id: str | None = None,
    retry_ms: int | None = None,
) -> bytes:
    """One message block. A block with ``id`` but no ``data`` dispatches nothing but still moves
    the reader's last event id, which is how a stream tells a client where it stands."""
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("an SSE id must be one line without NUL")
        lines.append(f"id: {id}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by readers, it keeps idle connections (and proxies) alive."""
    return f": {text}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Message:
    event: str
    data: str
    id: str | None
    """The last event id after this message (as ``EventSource.lastEventId``)."""


class Reader:
    """Feed it the stream's lines (without their line ends); it returns each dispatched message.

    ``last_event_id`` is what a reconnecting client sends as ``Last-Event-ID``; ``retry_ms`` the
    reconnection delay the server asked for.
    """

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Message | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Message | None:
        if self._id is not None:
            self.last_event_id = self._id
            self._id = None
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Message(event=event or "message", data="\n".join(data), id=self.last_event_id)
