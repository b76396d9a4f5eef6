"""Start-up checks that warn rather than refuse (the refusals live in
:mod:`service.app.settings`)."""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from service.app.settings import Settings

log = logging.getLogger(__name__)

# Names that never resolve on the public internet (RFC 2606, RFC 6761, RFC 6762, RFC 8375).
_PRIVATE_SUFFIXES = (
    ".localhost",
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".test",
    ".example",
    ".invalid",
)


def is_public_host(host: str) -> bool:
    """Whether ``host`` could be reached from the internet, judged without a DNS lookup."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    if host == "localhost" or "." not in host:
        return False
    return not host.endswith(_PRIVATE_SUFFIXES)


def unreachable_url_warning(settings: Settings) -> str | None:
    """The warning for a development server whose public URL providers cannot call back."""
    if settings.env != "development":
        return None
    host = urlsplit(settings.public_url).hostname or ""
    if is_public_host(host):
        return None
    real = [name for name, p in settings.providers.items() if p.api_key is not None]
    consequence = (
        f"callbacks from {', '.join(real)} will never arrive"
        if real
        else "fine for the built-in simulator, but real providers cannot call back"
    )
    return (
        f"REELHOOK_PUBLIC_URL {settings.public_url} is not reachable from the internet: "
        f"{consequence}; set it to a public https URL (a tunnel will do) to use real providers"
    )


def warn_if_unreachable(settings: Settings) -> None:
    """Log :func:`unreachable_url_warning`, if any (once per start)."""
    warning = unreachable_url_warning(settings)
    if warning is not None:
        log.warning(warning)
