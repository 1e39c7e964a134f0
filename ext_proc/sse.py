"""Incremental Server-Sent Events parsing.

Provider streams arrive in arbitrary TCP-sized pieces: an event can be split
across pieces and a piece can hold several events. The parser keeps the
unfinished tail between calls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"


class SseParser:
    def __init__(self) -> None:
        self._tail = b""

    def feed(self, piece: bytes) -> list[Event]:
        buf = (self._tail + piece).replace(b"\r\n", b"\n")
        *blocks, self._tail = buf.split(b"\n\n")
        return [e for e in (_parse_block(b) for b in blocks) if e is not None]

    def finish(self) -> list[Event]:
        tail, self._tail = self._tail, b""
        event = _parse_block(tail)
        return [event] if event is not None else []


def _parse_block(block: bytes) -> Event | None:
    data: list[str] = []
    name = "message"
    for line in block.decode("utf-8", errors="replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data:
        return None
    return Event(data="\n".join(data), event=name)


def encode(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode()
