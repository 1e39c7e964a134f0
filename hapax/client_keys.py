"""Client API keys: how a key is made, written in the config, and recognised.

A key is ``hpx-<id>-<secret>``: ``id`` names the key (12 hex digits, not secret: it appears
in the config, the access log and errors), ``secret`` is 192 random bits (48 hex digits).
The config holds only the key's *line*, ``<id>:{SHA}<base64 of SHA-1(secret)>``, which is
the htpasswd form Envoy's ``basic_auth`` filter checks: a client's ``Authorization: Bearer
<key>`` (or ``x-api-key: <key>``, the Anthropic SDK's) is turned into the Basic credentials
``<id>:<secret>`` by a few lines of Lua in Envoy, and Envoy compares hashes. No key is ever
in the config, in Envoy's configuration or in ext_proc; ``hapax keys create`` prints it once.

Why SHA-1: it is the one hash ``basic_auth`` takes. What a stored hash must resist is being
turned back into its secret (a preimage), which SHA-1 still does; the secret is random and
192 bits long, so no dictionary or brute force reaches it, and no salt is needed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "hpx"
ID_HEX_DIGITS = 12
SECRET_BYTES = 24
# Also the Lua pattern Envoy matches (control_plane/resources/client_keys.py), in Lua's syntax there.
KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}-([0-9a-f]{{{ID_HEX_DIGITS}}})-([0-9a-f]{{{SECRET_BYTES * 2}}})$")
LINE_PATTERN = re.compile(rf"^([0-9a-f]{{{ID_HEX_DIGITS}}}):\{{SHA\}}([A-Za-z0-9+/]{{27}}=)$")


class KeyLineError(ValueError):
    """A config line that is not a key line ``hapax keys create`` prints."""


@dataclass(frozen=True)
class KeyLine:
    """A key as the config holds it: its id and the hash of its secret."""

    key_id: str
    sha1: str  # base64, as htpasswd writes it

    @property
    def htpasswd(self) -> str:
        return f"{self.key_id}:{{SHA}}{self.sha1}"

    @classmethod
    def parse(cls, line: str) -> KeyLine:
        match = LINE_PATTERN.match(line.strip())
        if match is None:
            raise KeyLineError(
                f"expected a key line as `hapax keys create` prints it ({'0' * ID_HEX_DIGITS}:{{SHA}}<28 base64 "
                "characters>), never a key itself")
        return cls(match.group(1), match.group(2))


def _sha1_base64(secret: str) -> str:
    return base64.b64encode(hashlib.sha1(secret.encode()).digest()).decode()


def new_key() -> tuple[str, KeyLine]:
    """A fresh key and the line that stands for it in the config."""
    key_id = secrets.token_hex(ID_HEX_DIGITS // 2)
    secret = secrets.token_hex(SECRET_BYTES)
    return f"{KEY_PREFIX}-{key_id}-{secret}", KeyLine(key_id, _sha1_base64(secret))


def matches(key: str, line: KeyLine) -> bool:
    """Whether ``key`` is the one ``line`` stands for (for tests and tools: Envoy checks requests)."""
    match = KEY_PATTERN.match(key)
    return (match is not None and match.group(1) == line.key_id
            and secrets.compare_digest(_sha1_base64(match.group(2)), line.sha1))
