"""Opaque entry ids: what ``x-semantic-cache-entry`` carries and feedback names.

An id is ``<exact key>.<tag>`` where the tag is HMAC-SHA256(secret, partition ‖ exact key),
truncated to 128 bits. The exact key finds the entry; the tag proves the id was issued by this
deployment for that entry *in its partition* (model, scope, request fingerprint), so ids cannot
be made up, nor moved to another scope: without the secret no other id verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TAG_HEX = 32
"""Hex characters of the tag (128 bits)."""


class EntryIds:
    """Issues and checks entry ids under one secret."""

    def __init__(self, secret: str = "") -> None:
        # A random key when none is configured: ids then verify on this process only.
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _tag(self, partition: str, exact_key: str) -> str:
        mac = hmac.new(self._key, f"{partition}\x00{exact_key}".encode(), hashlib.sha256)
        return mac.hexdigest()[:TAG_HEX]

    def issue(self, partition: str, exact_key: str) -> str:
        """The id of the entry stored under ``exact_key`` in ``partition``."""
        return f"{exact_key}.{self._tag(partition, exact_key)}"

    @staticmethod
    def exact_key(entry_id: str) -> str | None:
        """The exact key an id names (None when it is not shaped like an id)."""
        key, sep, tag = entry_id.strip().partition(".")
        ok = (
            sep and len(key) == 64 and len(tag) == TAG_HEX and all(c in "0123456789abcdef" for c in key + tag)
        )
        return key if ok else None

    def valid(self, entry_id: str, partition: str) -> bool:
        """True when ``entry_id`` was issued for the entry of that exact key in ``partition``."""
        key = self.exact_key(entry_id)
        if key is None:
            return False
        return hmac.compare_digest(entry_id.strip(), self.issue(partition, key))
