"""Answer compression, as the real providers' HTTP servers do it.

A real API compresses its answer whenever the request's ``Accept-Encoding``
allows it (Anthropic does, behind its CDN; an OpenAI SDK asks with
``gzip, deflate``), so a gateway that forwards a client's ``Accept-Encoding``
receives bodies it cannot read. The fakes do the same, so such a gateway fails
its tests the way it would fail in production.

gzip and deflate only: the real APIs also offer ``br``, but Brotli needs a
package this project does not depend on, so the fakes never answer with it.
"""

from __future__ import annotations

import zlib

# What the fakes can produce, in the order they prefer it when the client accepts several.
CODINGS = ("gzip", "deflate")
# zlib's window bits: 16 + MAX_WBITS writes a gzip member; MAX_WBITS, HTTP's "deflate"
# (the zlib format of RFC 1950, which is what HTTP means by it).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def negotiate(accept_encoding: str) -> str | None:
    """The coding to answer with for this ``Accept-Encoding``, or None (identity).

    RFC 9110, 12.5.3: a coding is acceptable unless its ``q`` is 0; ``*`` stands
    for every coding the header does not name.
    """
    qualities: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip():
            qualities[name.strip().lower()] = _quality(params)
    wildcard = qualities.get("*", 0.0)
    return next((c for c in CODINGS if qualities.get(c, wildcard) > 0), None)


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def compress(data: bytes, coding: str) -> bytes:
    """A whole body in ``coding``."""
    encoder = Encoder(coding)
    return encoder.chunk(data) + encoder.end()


class Encoder:
    """A stream in ``coding``, each piece flushed so that it reaches the client at once.

    A plain ``compress`` would hold small events back until enough data arrives;
    a server that streams compressed events flushes each (``Z_SYNC_FLUSH``), and
    a client can decode every piece as it comes.
    """

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._zlib = zlib.compressobj(wbits=_WBITS[coding])

    def chunk(self, data: bytes) -> bytes:
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return self._zlib.flush()
