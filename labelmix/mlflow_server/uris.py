"""The tracking server's addresses: the one health probe, passwords masked or split off URIs,
loopback hosts. Plain functions, shared by the server, its pre-flight checks and the tracking
callback.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["check_health", "client_host", "is_loopback", "mask_password", "probe_health", "split_credentials"]


def probe_health(uri: str, timeout_s: float = 2, user: str | None = None, password: str | None = None) -> str | None:
    """None when ``GET <uri>/health`` answers 200 within ``timeout_s``, else why not (one line).

    ``user`` and ``password`` go in a basic-auth header; loopback addresses bypass any HTTP(S)_PROXY.
    The one health check: ``check_health`` and the tracking callback's pre-flight check use it."""
    import base64

    handlers = []
    if is_loopback(urlsplit(uri).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # an HTTP(S)_PROXY must not see loopback
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as response:
            return None if response.status == 200 else f"GET /health answered {response.status}"
    except urllib.error.HTTPError as e:
        return f"GET /health answered {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", None) or e)


def check_health(uri: str, timeout_s: float = 2) -> bool:
    """True when ``GET <uri>/health`` answers 200 within ``timeout_s``."""
    return probe_health(uri, timeout_s) is None


def mask_password(text: str) -> str:
    """``postgresql://u:secret@host/db`` -> ``postgresql://u:***@host/db``, anywhere in text."""
    # Greedy up to the last "@" before the path, so a raw "@" in a password is masked too.
    return re.sub(r"(://[^:/@\s]*:)[^/\s]*@", r"\1***@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:secret@host:5000/`` -> (``http://host:5000/``, ``user``, ``secret``).

    Only http(s) URIs lose their user info (a database URI keeps its login). A password written
    ``***`` (a redacted URI, as labelmix records them) counts as not given.
    """
    parts = urlsplit(uri) if "://" in uri else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")  # rpartition: a raw "@" in the password stays in it
    user, sep, password = userinfo.partition(":")
    password = unquote(password) if sep and password not in ("", "***") else None
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user) or None, password


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host:
        return f"[{host}]"
    return host
