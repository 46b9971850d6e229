"""URLs fit to print: in a log line or an error message, a URL never carries its secrets."""

from __future__ import annotations

from urllib.parse import unquote_plus

__all__ = ["REDACTED", "redact_url"]

REDACTED = "***"
# A query parameter whose name contains one of these is a secret. Matching on parts of the
# name errs towards hiding too much ("ssl_keyfile" is hidden too), never too little.
_SECRET_NAME_PARTS = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "signature")


def redact_url(url: str) -> str:
    """`url` with its password and secret query values replaced by REDACTED, the rest as written.

    `redis://u:pw@host/0?password=pw&db=1` prints as `redis://u:***@host/0?password=***&db=1`.
    A userinfo with no colon may be a token on its own (`https://TOKEN@host`), so all of it is
    hidden. A string with nothing to hide comes back unchanged.
    """
    # By hand, not with urlsplit/urlunsplit: those rewrite some of the URLs they rebuild
    # ("unix:///run/redis.sock" comes back as "unix:/run/redis.sock").
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, tail = _split_authority(rest)
    else:
        scheme, authority, tail = "", "", url
    before_fragment, hash_mark, fragment = tail.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    return (
        f"{scheme}{sep}{_redact_userinfo(authority)}{path}"
        f"{question_mark}{_redact_query(query)}{hash_mark}{fragment}"
    )


def _split_authority(rest: str) -> tuple[str, str]:
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    end = min(ends, default=len(rest))
    return rest[:end], rest[end:]


def _redact_userinfo(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, password = userinfo.partition(":")
    if not colon:
        return f"{REDACTED}@{host}" if user else netloc
    return f"{user}:{REDACTED}@{host}" if password else netloc


def _redact_query(query: str) -> str:
    items = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if equals and value and _is_secret_name(name):
            item = f"{name}={REDACTED}"
        items.append(item)
    return "&".join(items)


def _is_secret_name(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(part in lowered for part in _SECRET_NAME_PARTS)
