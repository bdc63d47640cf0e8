"""Secrets out of every URI that is shown or stored: logs, metadata, MLflow params, messages.

A URI can carry a secret in two places: its userinfo (``https://user:password@host``, or a bare
token ``https://TOKEN@host``) and its query string (``?access_token=...``, a pre-signed S3 URL's
``X-Amz-Signature`` and ``X-Amz-Credential``, an Azure SAS ``sig`` ...). `redact_uri` replaces
each secret with ``***`` and keeps the rest usable (scheme, host, port, path, harmless query
parameters); `redact_text` does it to every URI inside a message.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
#: Query parameters whose value is a secret, compared case-insensitively.
_SECRET_PARAMS = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "code",
        "credential",
        "id_token",
        "key",
        "password",
        "passwd",
        "pwd",
        "refresh_token",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
#: Parameter name fragments that mark a secret (``X-Amz-Signature``, ``client_secret`` ...).
_SECRET_FRAGMENTS = ("token", "secret", "password", "signature", "x-amz-", "x-goog-")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def _secret_param(name: str) -> bool:
    lowered = urllib.parse.unquote_plus(name).lower()
    return lowered in _SECRET_PARAMS or any(part in lowered for part in _SECRET_FRAGMENTS)


def _redact_params(query: str) -> str:
    """``a=1&token=abc`` -> ``a=1&token=***``, keeping the original encoding of the rest."""
    if not query:
        return query
    parts: list[str] = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        parts.append(f"{name}={MASK}" if sep and value and _secret_param(name) else item)
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """``uri`` with its userinfo secret and secret query parameters replaced by ``***``.

    ``https://alice:pw@host`` -> ``https://alice:***@host``; ``https://TOKEN@host`` ->
    ``https://***@host``; ``...?access_token=abc&x=1`` -> ``...?access_token=***&x=1``.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:  # not a URI after all (e.g. a broken IPv6 literal): hide what may leak
        return _URI_RE.sub(MASK, uri) if "@" in uri or "?" in uri else uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)  # as written: keeps an IPv6 literal's brackets
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    query = _redact_params(parts.query)
    # An OAuth implicit-flow fragment carries ``access_token=`` too.
    fragment = _redact_params(parts.fragment) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def redact_text(text: str) -> str:
    """``text`` with every URI in it passed through `redact_uri`."""
    return _URI_RE.sub(lambda match: redact_uri(match.group(0)), text)
