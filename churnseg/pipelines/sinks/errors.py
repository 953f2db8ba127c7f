"""The publishing error, and the scrubbing of credentials out of its messages."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from churnseg.pipelines.config import redact_secrets


class PublishError(RuntimeError):
    """The output database cannot take the data; nothing was changed."""


def scrub(text: str, url: str) -> str:
    """Return ``text`` with ``url``'s password removed wherever it appears.

    Database drivers sometimes echo the connection string (libpq does on a malformed one), so
    every message that leaves a publish function passes through here.
    """
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = redact_secrets(text)
    for secret in sorted({password or "", unquote(password or "")}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
