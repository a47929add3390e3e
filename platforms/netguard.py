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

The host checked is the host httpx will use: ``httpx.URL(url).raw_host``, the name encoded with
IDNA 2008 as httpx encodes it. Handing the name as typed to the system resolver would check its
IDNA 2003 twin instead (``ß.example`` -> ``ss.example``, while httpx connects to
``xn--zca.example``).

The connection is pinned to the checked address: :func:`guarded_send` names it in the request's
``PINNED_ADDRESS`` extension and the workers' transport (``platforms.deadline``) connects there,
keeping the name for ``Host``, SNI and the certificate check, so a DNS server answering
public-then-private (rebinding) gains nothing. A client with another transport (a test's
``MockTransport``) ignores the extension. IPv4 is preferred when a name has both families.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from platforms.deadline import PINNED_ADDRESS
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
        self.checked_address(url)
        return url

    def checked_address(self, url: str) -> str | None:
        """The address ``url`` may be requested at (to pin the connection to); None when
        ``allow_private`` skips the check. Raises as :meth:`check_url`."""
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
            raise UnsafeAddress("the URL is too long")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - a port that is not a number raises here
            parsed = httpx.URL(url)  # the URL as the client will send it
            host = parsed.raw_host.decode("ascii").rstrip(".")
        except (ValueError, UnicodeError, httpx.InvalidURL):
            raise UnsafeAddress("not a valid URL") from None
        allowed = ("https", "http") if self.allow_private else ("https",)
        if parts.scheme.lower() not in allowed or parsed.scheme not in allowed:
            raise UnsafeAddress("only https URLs are allowed")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc or parsed.userinfo:
            raise UnsafeAddress("URLs with user information are not allowed")
        if not host:
            raise UnsafeAddress("the URL has no host")
        if self.allow_private:
            return None
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = self.check_host(host, port)
        return next((a for a in addresses if ":" not in a), addresses[0])

    def check_host(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` (ASCII, as the client sends it) and return its addresses; refuse it
        unless every one is public."""
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
        return addresses


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
    extensions = dict(kwargs.pop("extensions", None) or {})
    for _hop in range(max_redirects + 1):
        address = guard.checked_address(url)
        # connect where the check looked (platforms.deadline)
        pinned = {**extensions, PINNED_ADDRESS: address} if address is not None else extensions
        try:
            return send(
                client,
                method,
                url,
                platform=platform,
                classify=_redirect_aware(classify, platform),
                follow_redirects=False,
                extensions=pinned or None,
                **kwargs,
            )
        except Redirected as redirect:
            if method.upper() not in ("GET", "HEAD"):
                raise
            url = urljoin(url, redirect.location)
    raise Redirected("too many redirects", location=url, platform=platform)
