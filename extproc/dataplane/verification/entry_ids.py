"""Opaque entry ids: what ``x-semantic-cache-entry`` carries and feedback names.

An id is ``<exact key>.<created ms>.<tag>`` where the tag is HMAC-SHA256(secret, partition ‖
exact key ‖ created ms), truncated to 128 bits. The exact key finds the entry; the creation time
(Unix milliseconds, as Milvus stores it) names *that* entry, not a newer one stored under the
same key since (a refresh, a re-store after expiry): feedback on it finds nothing. The tag proves
the id was issued by this deployment for that entry *in its partition* (model, scope, request
fingerprint), so ids cannot be made up, nor moved to another scope: without the secret no other
id verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TAG_HEX = 32
"""Hex characters of the tag (128 bits)."""
MAX_ID_CHARS = 64 + 1 + 20 + 1 + TAG_HEX
"""The longest id: a 64-hex key, a signed 64-bit millisecond count, the tag (111 characters today)."""
_SHAPE = re.compile(rf"([0-9a-f]{{64}})\.(-?[0-9]{{1,19}})\.([0-9a-f]{{{TAG_HEX}}})")


def created_ms(created_at: float) -> int:
    """An entry's creation time as its id and the backends' version checks read it (ms, rounded
    as the Milvus row stores it, so an entry read back from Milvus names the same version)."""
    return round(created_at * 1000)


def entry_ref(exact_key: str, created_at: float) -> str:
    """The name of one version of an entry (its own outcomes are kept under it)."""
    return f"{exact_key}.{created_ms(created_at)}"


class EntryIds:
    """Issues and checks entry ids under one secret."""

    def __init__(self, secret: str = "") -> None:
        # A random key when none is configured: ids then verify on this process only.
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _tag(self, partition: str, exact_key: str, ms: int) -> str:
        mac = hmac.new(self._key, f"{partition}\x00{exact_key}\x00{ms}".encode(), hashlib.sha256)
        return mac.hexdigest()[:TAG_HEX]

    def issue(self, partition: str, exact_key: str, created_at: float) -> str:
        """The id of the entry stored under ``exact_key`` in ``partition`` at ``created_at``."""
        ms = created_ms(created_at)
        return f"{exact_key}.{ms}.{self._tag(partition, exact_key, ms)}"

    @staticmethod
    def parse(entry_id: str) -> tuple[str, int] | None:
        """(exact key, creation ms) an id names (None when it is not shaped like an id)."""
        shaped = _SHAPE.fullmatch(entry_id.strip())
        return (shaped[1], int(shaped[2])) if shaped else None

    def valid(self, entry_id: str, partition: str, created_at: float) -> bool:
        """True when ``entry_id`` was issued for the entry of its exact key in ``partition``
        created at ``created_at`` (a newer entry under that key has another id)."""
        parsed = self.parse(entry_id)
        if parsed is None or parsed[1] != created_ms(created_at):
            return False
        return hmac.compare_digest(entry_id.strip(), self.issue(partition, parsed[0], created_at))
