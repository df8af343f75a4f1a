"""The project's exception hierarchy: every error carries a message that says what to do.

No message may contain a customer's value: name customer ids, tokens and key versions only.
"""

from __future__ import annotations


class TokenProxyError(Exception):
    """Base of every error tokenproxy raises on purpose."""


class DomainTooSmallError(TokenProxyError, ValueError):
    """FF1 was asked to encrypt a domain below the 10^6 values NIST SP 800-38G requires."""


class InvalidInputError(TokenProxyError, ValueError):
    """A value or parameter is outside what the operation accepts."""


class KeyringError(TokenProxyError):
    """The keyring cannot serve the request (unknown, retired or missing key version)."""


class KeyStoreError(TokenProxyError):
    """keys/ cannot be read or written: wrong KEK, corrupt file, newer format, bad permissions."""


class NotATokenError(TokenProxyError, LookupError):
    """The value is not a token this proxy issued (or its key version is retired)."""


class VaultMissError(TokenProxyError, LookupError):
    """A short value needs a vault token that the vault could not provide: fail closed."""
