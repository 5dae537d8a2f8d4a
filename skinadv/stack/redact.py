"""Credentials out of what is shown: URLs and command lines, before printing or logging."""

from __future__ import annotations

import re
import urllib.parse

_SECRET_QUERY_KEYS = ("password", "sslpassword", "passfile", "secret", "token")


def redact(url: str | None) -> str | None:
    """The URL without user:password or a password query parameter (safe to print).

    Args:
        url: any URL or database URI (None and '' are returned as they are).

    Returns:
        ``scheme://***@host:port/...`` with secret query values as ``***``; an unparsable
        URL keeps only its scheme.
    """
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None and parts.username is None:
            netloc = parts.netloc
        else:
            netloc = parts.hostname or ""
            if parts.port:
                netloc += f":{parts.port}"
            netloc = f"***@{netloc}"
    except ValueError:  # a malformed port: hide everything before the host
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"
    query = parts.query
    if query and any(k in query.lower() for k in _SECRET_QUERY_KEYS):
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}=***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else f"{k}={v}"
            for k, v in pairs
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")


def redact_text(text: str) -> str:
    """Free text (an error message, a log line) with every URL in it redacted."""
    return _URL.sub(lambda m: str(redact(m.group(0))), text)


def redact_args(args: list[str]) -> list[str]:
    """A command line with every URL argument redacted (for logs)."""
    return [str(redact(a)) if "://" in a else a for a in args]


def has_password(uri: str) -> bool:
    """True when a URI carries a password (in its netloc or as a query parameter)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.password is not None:
            return True
    except ValueError:
        return True  # unparsable: treat as secret
    keys = [k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return any(s in k for k in keys for s in _SECRET_QUERY_KEYS)
