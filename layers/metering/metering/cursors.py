"""Page cursors of the Usage API: opaque to the client, and bound to the route, account and period they page.

A cursor is base64url (no padding) of a version byte, an HMAC-SHA256 and the position the next page starts
after (a contact id, a period). The MAC covers the version, route, account, period and position, with a key
from a secret the stack generates: a cursor replayed on another route, account or period, or altered in any
byte, fails the check and is refused. The key is read once per container, at the first cursor it signs or
opens; the cursor carries no expiry (rotating the secret retires every cursor at once)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from metering.api_access import InvalidCursor

VERSION = 1
MAC_BYTES = hashlib.sha256().digest_size
MAX_CURSOR_LENGTH = 512
"""Longer than any cursor this module makes (a 128-character id signs into about 220 characters)."""
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
_CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True, slots=True)
class CursorScope:
    """What a cursor pages: the route's name, the account and the period (empty for the invoice listing)."""

    route: str
    account_id: str
    period: str = ""


class Cursors:
    """Signs positions into cursors and opens cursors into positions, with the key `read_key` returns."""

    def __init__(self, read_key: Callable[[], str]) -> None:
        self._read_key = read_key
        self._key: bytes | None = None

    def sign(self, scope: CursorScope, position: str) -> str:
        payload = position.encode("utf-8")
        token = bytes([VERSION]) + self._mac(scope, payload) + payload
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def open(self, scope: CursorScope, cursor: str) -> str:
        """The position a cursor of this scope holds; InvalidCursor for anything this module did not sign for
        the same scope."""
        if len(cursor) > MAX_CURSOR_LENGTH or not _CURSOR.fullmatch(cursor):
            raise InvalidCursor("the cursor is not one this API returned")
        try:
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor("the cursor is not one this API returned") from None
        version, mac, payload = token[:1], token[1 : 1 + MAC_BYTES], token[1 + MAC_BYTES :]
        if version != bytes([VERSION]) or not payload:
            raise InvalidCursor("the cursor is not one this API returned")
        if not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise InvalidCursor("the cursor was altered, or belongs to another account, period or listing")
        return payload.decode("utf-8")

    def _mac(self, scope: CursorScope, payload: bytes) -> bytes:
        if self._key is None:
            self._key = self._read_key().encode("utf-8")
        # JSON escapes every line break, so the header ends at the first one and the position follows it
        header = json.dumps([VERSION, scope.route, scope.account_id, scope.period], separators=(",", ":"))
        return hmac.new(self._key, header.encode("utf-8") + b"\n" + payload, hashlib.sha256).digest()
