"""Bearer tokens of the API: kept as SHA-256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from churnseg.pipelines.config import ApiConfig, ConfigError

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Principal:
    """Who a valid token belongs to and what it may do."""

    name: str
    scopes: frozenset[str]
    owner_id: str | None = None

    def may(self, scope: str) -> bool:
        """Return whether the token carries ``scope``."""
        return scope in self.scopes


def token_digest(token: str) -> str:
    """Return the lower-case hex SHA-256 of a token (what the config and memory hold)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRegistry:
    """The configured tokens by digest; no plain token is kept after construction."""

    def __init__(self, config: ApiConfig) -> None:
        """Read every token (environment variable or digest) of the ``api`` config section.

        Raises:
            ConfigError: No token is configured, an environment variable is unset or holds a
                token shorter than 16 characters, or two tokens are the same.
        """
        if not config.tokens:
            raise ConfigError(
                "api.tokens is empty: nobody could call the API; add a token (docs/api.md)"
            )
        self._by_digest: dict[str, Principal] = {}
        for i, token in enumerate(config.tokens):
            where = f"api.tokens[{i}] ({token.name})"
            if token.token_env is not None:
                value = os.environ.get(token.token_env)
                if not value:
                    raise ConfigError(f"{where}: environment variable {token.token_env} is not set")
                if len(value) < MIN_TOKEN_CHARS:
                    raise ConfigError(
                        f"{where}: the token in {token.token_env} has {len(value)} characters; "
                        f"use at least {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 24)"
                    )
                digest = token_digest(value)
            else:
                digest = str(token.token_sha256)
            if digest in self._by_digest:
                raise ConfigError(f"{where}: the same token as {self._by_digest[digest].name}")
            self._by_digest[digest] = Principal(token.name, frozenset(token.scopes), token.owner_id)

    def principal(self, token: str) -> Principal | None:
        """Return the holder of ``token``, or None when it is not a configured token."""
        digest = token_digest(token)
        found = None
        for known, principal in self._by_digest.items():
            # Every digest is compared, in constant time: timing says nothing about which.
            if hmac.compare_digest(known, digest):
                found = principal
        return found
