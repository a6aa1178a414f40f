"""A guarded HTTP POST for URLs that tenants give us (per-job callbacks): the SSRF guard.

A tenant's ``callback_url`` makes a worker open a connection on the tenant's say-so,
from inside the operator's network. Without a guard that is a server-side request
forgery: ``http://169.254.169.254/latest/meta-data/`` reads the cloud's instance
credentials, ``http://127.0.0.1:6390/`` talks to the embedded Redis, ``http://10.0.0.7/``
reaches whatever the worker's network reaches. So every outgoing request here:

* **Is an http(s) URL of at most** :data:`MAX_URL_CHARS` **characters, with a host and no
  user name or password** (:func:`parse_url`); nothing else is even looked at.
* **Resolves the host once, and refuses if ANY answer is not a public address**
  (:func:`resolve`, :func:`blocked_reason`): loopback, private (RFC 1918, IPv6 unique local
  ``fc00::/7``, which holds AWS's ``fd00:ec2::254``), link-local (``169.254.0.0/16``, where
  ``169.254.169.254`` and the other metadata services answer, and ``fe80::/10``), shared
  address space ``100.64.0.0/10`` (carrier-grade NAT; Alibaba's metadata service), "this
  network" ``0.0.0.0/8``, multicast, reserved, documentation and benchmarking ranges, and
  anything else Python does not call global. An IPv6 address that carries an IPv4 one
  (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is judged by
  the IPv4 address inside. A name with one public and one private answer is refused: an
  attacker who controls the DNS chooses which one a resolver would hand out.
* **Connects to the checked address itself**, never to the name again: the Host header,
  TLS SNI and the certificate check use the name, the socket uses the address that was
  checked. A DNS answer that changes between the check and the connection (DNS
  rebinding) therefore cannot send the request somewhere else.
* **Follows no redirect** (a 3xx is the receiver's answer, nothing more), has a connect
  and a per-read timeout, reads at most ``max_response_bytes`` of the answer for at most
  ``timeout`` seconds (undecoded: a gzip bomb stays compressed) and then hangs up.

The operator can let some networks through although they are private
(``TTS_CALLBACK_ALLOWED_NETWORKS``, CIDRs, e.g. a receiver on the same VPC): an address
inside one of them passes. An entry that is not a valid CIDR allows nothing (logged); the
settings refuse one at start (``settings.load_settings``), so that is only a second guard.

Refusals raise :class:`~tasks.exceptions.CallbackRefused` (an ``InvalidRequest``: a
400 when it happens at submit; at delivery the caller gives up at once, since asking
again gets the same answer). Anything that may work on a later try (no DNS answer, a
connection refused, a timeout, a TLS error) raises
:class:`~tasks.exceptions.CallbackDeliveryFailed`.

Operator webhooks (``TTS_WEBHOOK_URLS``) do not come through here: the operator set them.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.util import Timeout

from .exceptions import CallbackDeliveryFailed, CallbackRefused

log = logging.getLogger(__name__)

__all__ = [
    "MAX_URL_CHARS",
    "IPAddress",
    "IPNetwork",
    "OutboundResponse",
    "Resolver",
    "Target",
    "allowed_networks",
    "blocked_reason",
    "check_address",
    "literal_address",
    "parse_url",
    "post",
    "public_callback",
    "redact_query",
    "resolve",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolver(host, port)``: every address the host name resolves to, as strings.
Resolver = Callable[[str, int], list[str]]

#: The longest URL accepted.
MAX_URL_CHARS = 2048
#: Bytes asked for per read of a response body.
READ_CHUNK = 8192
#: At most this many resolved addresses are tried when connecting fails.
MAX_ADDRESSES_TRIED = 4

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

#: Blocked ranges and how a refusal names them, most specific first. Anything else that is
#: not global (``ipaddress``'s own table) is refused too, as "not a public address".
_BLOCKED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason) for cidr, reason in (
        ("0.0.0.0/8", "the 'this network' range 0.0.0.0/8 (0.0.0.0 reaches the local host)"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local (cloud metadata services such as 169.254.169.254 answer there)"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT, RFC 6598; some cloud metadata services)"),
        ("192.0.0.0/24", "special-purpose (IETF protocol assignments; some cloud metadata services)"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (IPv6 unique local; AWS's metadata service is fd00:ec2::254)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated, private)"),
        ("ff00::/8", "multicast"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("64:ff9b:1::/48", "NAT64 local use"),
        ("::/96", "IPv4-compatible (deprecated)"),
    )
)
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    url: str
    scheme: str
    #: Lower-case, IDNA-encoded (ASCII), without brackets for an IPv6 literal.
    host: str
    port: int
    #: Path and query, as sent in the request line (``/`` at least).
    path: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the name (bracketed when IPv6), and the port when not the default."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"


@dataclass(frozen=True)
class OutboundResponse:
    """What a receiver answered: its status, how much of the body was read and from which address."""

    status: int
    body: bytes
    #: True when the body was longer than what was read (the cap or the time ran out).
    truncated: bool
    address: str
    elapsed: float


def _refuse(url: str, reason: str) -> CallbackRefused:
    return CallbackRefused(f"callback_url {redact_query(url)!r} is refused: {reason}", reason=reason)


def redact_query(url: str) -> str:
    """``url`` with any query string (and fragment) replaced by ``…``: tokens often ride there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "…"
    query = "…" if parts.query else ""
    fragment = "…" if parts.fragment else ""
    netloc = parts.netloc.rpartition("@")[2]  # never show a user name or password
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def public_callback(url: str, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the API shows of a job's or batch's callback: its recorded delivery state
    (``tasks.callbacks``), or ``pending`` with no attempt before one is queued."""
    if state:
        return dict(state)
    return {"url": redact_query(url), "status": "pending", "attempts": 0, "last_error": None}


def parse_url(url: str) -> Target:
    """Check the shape of a callback URL; CallbackRefused naming what is wrong.

    http or https, at most :data:`MAX_URL_CHARS` characters, no whitespace or control
    characters, a host name (letters, digits, ``-`` and ``_`` labels; IDNA for others) or
    an IP literal, a valid port, no user name or password. Nothing is resolved here.
    """
    if not isinstance(url, str):
        raise CallbackRefused("'callback_url' must be a string (an https:// or http:// URL)",
                              reason="not a string")
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"'callback_url' has {len(url)} characters; the limit is {MAX_URL_CHARS}",
                              reason="too long")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _refuse(url, "it contains whitespace or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, f"it is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(url, f"the scheme must be https or http, not {parts.scheme or 'missing'!r}")
    if "@" in parts.netloc:
        raise _refuse(url, "it carries a user name or password; put a token in the path or query instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _refuse(url, "it has no host")
    if "%" in host:
        raise _refuse(url, "an IPv6 zone index is not allowed")
    if literal_address(host) is None:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _refuse(url, "the host name is not valid") from None
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
            raise _refuse(url, "the host name is not valid")
    if port == 0:
        raise _refuse(url, "port 0 is not a port")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), path=path)


def literal_address(host: str) -> IPAddress | None:
    """The IP address ``host`` spells, or None for a name.

    Also the legacy IPv4 spellings that resolvers accept (``127.1``, ``0x7f000001``,
    ``2130706433``, ``0177.0.0.1``): they are addresses, not names.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and any(ch.isdigit() for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@functools.lru_cache(maxsize=32)
def _parse_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.error("TTS_CALLBACK_ALLOWED_NETWORKS entry %r is not a CIDR network; it allows nothing", entry)
    return tuple(networks)


def allowed_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The operator's allow list (``TTS_CALLBACK_ALLOWED_NETWORKS``) as networks; bad entries are skipped (logged)."""
    return _parse_networks(tuple(entries))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), and what kind of carrier it is."""
    if ip in _IPV4_MAPPED and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "an IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "a NAT64"
    if ip in _SIX_TO_FOUR and ip.sixtofour is not None:
        return ip.sixtofour, "a 6to4"
    return None


def _is_allowed(ip: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in allowed)


def blocked_reason(ip: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``ip`` may not be connected to (None when it may): it is not a public address
    and not inside one of the ``allowed`` networks."""
    allowed = tuple(allowed)
    if _is_allowed(ip, allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            address, kind = inner
            reason = blocked_reason(address, allowed)
            return f"{kind} address of {address}, which is {reason}" if reason else None
    for network, reason in _BLOCKED:
        if ip.version == network.version and ip in network:
            return reason
    if not ip.is_global:
        return "not a public address"
    return None


def check_address(ip: IPAddress, url: str, allowed: Iterable[IPNetwork] = ()) -> IPAddress:
    """``ip`` when it may be connected to; CallbackRefused naming its range otherwise."""
    reason = blocked_reason(ip, allowed)
    if reason is not None:
        raise _refuse(url, f"{ip} is {reason}")
    return ip


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection (``getaddrinfo``), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def resolve(target: Target, allowed: Iterable[IPNetwork] = (),
            resolver: Resolver = system_resolver) -> list[IPAddress]:
    """The addresses to connect to, each checked; CallbackRefused if ANY of them is blocked.

    A literal address is checked as it is. A name that does not resolve raises
    CallbackDeliveryFailed (DNS may answer on a later try).
    """
    allowed = tuple(allowed)
    literal = literal_address(target.host)
    if literal is not None:
        return [check_address(literal, target.url, allowed)]
    try:
        answers = resolver(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise CallbackDeliveryFailed(f"{target.host!r} could not be resolved: {exc}") from None
    if not answers:
        raise CallbackDeliveryFailed(f"{target.host!r} resolved to no address")
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            ip = ipaddress.ip_address(answer)
        except ValueError:
            raise _refuse(target.url, f"{target.host} resolved to {answer!r}, which is not an IP address") from None
        reason = blocked_reason(ip, allowed)
        if reason is not None:
            raise _refuse(target.url, f"{target.host} resolves to {ip}, which is {reason}")
        addresses.append(ip)
    return addresses


def _pool(target: Target, address: IPAddress, timeout: float, ca_certs: str | None) -> HTTPConnectionPool:
    """A one-connection pool to ``address`` that speaks to it as ``target.host``."""
    limits = Timeout(connect=timeout, read=timeout)
    host = address.compressed
    if target.scheme == "https":
        return HTTPSConnectionPool(host, target.port, timeout=limits, maxsize=1, retries=False,
                                   cert_reqs="CERT_REQUIRED", ca_certs=ca_certs or certifi.where(),
                                   assert_hostname=target.host, server_hostname=target.host)
    return HTTPConnectionPool(host, target.port, timeout=limits, maxsize=1, retries=False)


def post(url: str, body: bytes, headers: Mapping[str, str], *, allowed: Iterable[IPNetwork] = (),
         timeout: float = 5.0, max_response_bytes: int = 65536, resolver: Resolver = system_resolver,
         ca_certs: str | None = None) -> OutboundResponse:
    """POST ``body`` to ``url`` through the guard; the receiver's answer, whatever its status.

    CallbackRefused when the URL or any address it resolves to is refused (nothing is
    sent); CallbackDeliveryFailed when no connection or no answer came (DNS, connect,
    TLS, timeout). A redirect is returned as it is, never followed. ``resolver`` and
    ``ca_certs`` are for tests (the system's resolver and certifi's roots otherwise).
    """
    target = parse_url(url)
    addresses = resolve(target, allowed, resolver)
    request_headers = {**headers, "Host": target.host_header}
    started = time.monotonic()
    last: Exception | None = None
    for address in addresses[:MAX_ADDRESSES_TRIED]:
        pool = _pool(target, address, timeout, ca_certs)
        try:
            try:
                response = pool.urlopen("POST", target.path, body=body, headers=request_headers, retries=False,
                                        redirect=False, assert_same_host=False, preload_content=False,
                                        decode_content=False, release_conn=False)
            except (NewConnectionError, ConnectTimeoutError) as exc:
                last = exc  # nothing was sent: the next address may answer
                continue
            except (HTTPError, OSError) as exc:
                raise CallbackDeliveryFailed(f"POST to {redact_query(url)} ({address}) failed: "
                                             f"{type(exc).__name__}: {exc}") from None
            try:
                data, truncated = _read_capped(response, max_response_bytes, time.monotonic() + timeout)
            finally:
                response.close()
            return OutboundResponse(status=response.status, body=data, truncated=truncated,
                                    address=address.compressed, elapsed=time.monotonic() - started)
        finally:
            pool.close()
    raise CallbackDeliveryFailed(f"could not connect to {redact_query(url)} "
                                 f"({', '.join(a.compressed for a in addresses[:MAX_ADDRESSES_TRIED])}): "
                                 f"{type(last).__name__ if last else 'no address'}")


def _read_capped(response: BaseHTTPResponse, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, until ``deadline``; (bytes, whether more was left unread)."""
    read = response.read
    received = bytearray()
    try:
        while len(received) < limit:
            if time.monotonic() > deadline:
                return bytes(received), True
            chunk = read(min(READ_CHUNK, limit - len(received)), decode_content=False)
            if not chunk:
                return bytes(received), False
            received += chunk
        return bytes(received), bool(read(1, decode_content=False))
    except (HTTPError, OSError):  # the answer's status is what counts; a broken body is only logged
        log.debug("callback response body could not be read to the end")
        return bytes(received), True
