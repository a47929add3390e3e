"""The SSRF guard: never let a user-supplied URL make us call into our own network.

Mastodon instances, Bluesky services, PDS endpoints and DID documents are URLs a *user* chooses
(or a document a user controls points at). Without a guard, "connect my Mastodon at
``http://169.254.169.254``" would make a worker fetch cloud metadata, and a redirect from a public
host could do the same one hop later. So every such request goes through :func:`guarded_send`:

* only ``https`` (``http`` too when ``ALLOW_PRIVATE_NETWORK=1``, for tests and development);
* no user-info in the URL (``https://good@evil``), a bounded length, a real host name;
* the host is resolved and **every** address it resolves to must be public: loopback, private,
  link-local, CGNAT, multicast, reserved, unspecified and documentation ranges are refused, and
  IPv6 forms that embed an IPv4 address (``::ffff:10.0.0.1``, NAT64, 6to4, Teredo) are judged by
  the embedded address;
* redirects are never followed blindly: each hop is checked again before it is requested, only
  for GET/HEAD, and at most :data:`MAX_REDIRECTS` times.

Residual risk, stated plainly: the check resolves the name and then httpx resolves it again to
connect, so a DNS server that answers public-then-private (rebinding) within that window could
still slip through. Pinning the connection to the checked address would need our own transport,
and the adapters deliberately use the injected ``httpx.Client`` (the test seam); the window is a
few milliseconds and every hop is checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from platforms.http import Classifier, send
from social_accounts.errors import Permanent, PlatformError, Transient, UnsafeAddress

__all__ = [
    "MAX_REDIRECTS",
    "MAX_URL_LENGTH",
    "NetGuard",
    "Redirected",
    "Resolver",
    "guarded_send",
    "is_public_address",
    "system_resolver",
]

#: a URL longer than this is refused before anything else is looked at
MAX_URL_LENGTH = 2048
#: redirect hops followed (each one checked) before giving up
MAX_REDIRECTS = 3

#: ``resolver(host, port) -> addresses`` (strings); raises OSError when the name does not resolve
Resolver = Callable[[str, int], Iterable[str]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it embeds one."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]  # the client's (obfuscation undone by the stdlib)
    if addr in _NAT64 or addr in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    # IPv4-compatible (deprecated) ::a.b.c.d
    if int(addr) >> 32 == 0 and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_public_address(value: str) -> bool:
    """True when ``value`` (an IP literal) is a globally routable unicast address."""
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            return is_public_address(str(inner))
        if addr.is_site_local:
            return False
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    )


@dataclass(frozen=True)
class NetGuard:
    """Checks URLs before they are requested.

    Parameters:
      allow_private(bool): ``ALLOW_PRIVATE_NETWORK``: allow http and any address (tests, dev).
      resolver(Resolver): name resolution (tests inject one that maps names to chosen addresses).
      platform(str): named in the errors raised.
    """

    allow_private: bool = False
    resolver: Resolver = system_resolver
    platform: str = ""

    def check_url(self, url: str) -> str:
        """Return ``url`` when it may be requested; raise ``UnsafeAddress`` when not.

        Raises:
          UnsafeAddress: bad scheme, user-info, oversized, no host, or any non-public address.
          Transient: the host name does not resolve right now (nothing was sent).
        """
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
            raise UnsafeAddress("the URL is too long")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UnsafeAddress("not a valid URL") from None
        allowed = ("https", "http") if self.allow_private else ("https",)
        if parts.scheme.lower() not in allowed:
            raise UnsafeAddress("only https URLs are allowed")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UnsafeAddress("URLs with user information are not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UnsafeAddress("the URL has no host")
        if self.allow_private:
            return url
        port = port or (443 if parts.scheme.lower() == "https" else 80)
        self.check_host(host, port)
        return url

    def check_host(self, host: str, port: int) -> None:
        """Resolve ``host`` and refuse it unless every address is public."""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            addresses: list[str] = [host]
        except ValueError:
            try:
                addresses = list(self.resolver(host, port))
            except (OSError, UnicodeError):
                raise Transient("the host name does not resolve", platform=self.platform) from None
        if not addresses:
            raise Transient("the host name does not resolve", platform=self.platform)
        if not all(is_public_address(a) for a in addresses):
            raise UnsafeAddress("the address is not on the public internet (private, loopback or reserved)")


class Redirected(Permanent):
    """A response redirected somewhere we did not follow (a POST, or too many hops)."""

    kind = "redirected"

    def __init__(self, message: str, *, location: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.location = location


def _redirect_aware(classify: Classifier | None, platform: str) -> Classifier:
    def read(response: httpx.Response) -> PlatformError | None:
        location = response.headers.get("location")
        if response.is_redirect and location:
            return Redirected("redirected", location=location, platform=platform, status=response.status_code)
        return classify(response) if classify is not None else None

    return read


def guarded_send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    guard: NetGuard,
    platform: str,
    classify: Classifier | None = None,
    max_redirects: int = MAX_REDIRECTS,
    **kwargs: Any,
) -> httpx.Response:
    """:func:`platforms.http.send` behind the guard, following only checked GET/HEAD redirects.

    Raises what ``send`` raises, plus ``UnsafeAddress`` (before any request to a refused URL)
    and ``Redirected`` (a redirect of a non-GET request, or more than ``max_redirects`` hops).
    """
    kwargs.pop("follow_redirects", None)
    for _hop in range(max_redirects + 1):
        guard.check_url(url)
        try:
            return send(
                client,
                method,
                url,
                platform=platform,
                classify=_redirect_aware(classify, platform),
                follow_redirects=False,
                **kwargs,
            )
        except Redirected as redirect:
            if method.upper() not in ("GET", "HEAD"):
                raise
            url = urljoin(url, redirect.location)
    raise Redirected("too many redirects", location=url, platform=platform)
