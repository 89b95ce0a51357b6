"""gRPC target strings -> endpoints to dial, decided before any I/O."""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import unquote


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    lane: str          # "tcp", "unix", or "unsupported" (then ``refused`` says why)
    host: str = ""     # tcp: a name or an address
    port: int = 0
    path: str = ""     # unix: the socket file; unsupported: the target
    refused: str = ""  # unsupported: why no connection is tried

    def __str__(self) -> str:
        if self.lane == "unsupported":
            return self.path
        if self.lane == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _host_port(text: str, default_port: int | None, original: str, *, server: bool = False) -> Endpoint:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"bad target {original!r}: unclosed '['")
        host, rest = text[1:close], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad target {original!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        # A bare IPv6 address without brackets, no port.
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not host and not server:
        raise ValueError(f"bad target {original!r}: no host")
    if port_text:
        low = 0 if server else 1
        if not port_text.isdigit() or not low <= int(port_text) < 65536:
            raise ValueError(f"bad address {original!r}: port must be {low}-65535")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f"bad target {original!r}: no port")
    return Endpoint("tcp", host=host, port=port)


# A URI scheme before the target's first colon (RFC 3986).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_KNOWN_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract"})
# Resolvers gRPC has that lanerpc does not: such a target is never read as host:port.
_UNSUPPORTED_SCHEMES = {
    "xds": "xDS (xds:) targets need an xDS control plane, which lanerpc does not implement",
    "google-c2p": "google-c2p: targets need Google's directpath resolver, which lanerpc "
                  "does not implement",
}


def _unsupported(target: str) -> list[Endpoint] | None:
    """A target whose scheme lanerpc can't resolve, as an endpoint that fails every
    connection attempt with the reason. grpc.aio makes such a channel too and fails
    each call UNAVAILABLE (TRANSIENT_FAILURE); lanerpc does the same, saying why."""
    match = _SCHEME.match(target)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme in _KNOWN_SCHEMES:
        return None
    reason = _UNSUPPORTED_SCHEMES.get(scheme)
    if reason is None:
        try:
            if not target[match.end():].startswith("/"):
                _host_port(target, 443, target)  # "localhost:50051" looks like a scheme too
                return None
        except ValueError:
            pass
        reason = (f"no resolver for the target's scheme {scheme!r}: lanerpc resolves "
                      f"host:port, dns:, ipv4:, ipv6: and unix: targets")
    return [Endpoint("unsupported", path=target,
                     refused=f"target {target!r} is not supported: {reason}")]


def parse_target(target: str) -> list[Endpoint]:
    """Endpoints for a gRPC target: ``host:port``, ``ipv4:a:p,b:p``, ``ipv6:[a]:p``,
    ``dns:///name:port``, ``unix:path``, ``unix:///abs/path``, ``unix-abstract:name``;
    another scheme (``xds:``, say) gives one endpoint that refuses to connect."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a non-empty string; got {target!r}")
    unsupported = _unsupported(target)
    if unsupported is not None:
        return unsupported
    if target.startswith("unix://"):
        path = unquote(target[len("unix://"):])
        if not path.startswith("/"):
            raise ValueError(f"bad target {target!r}: unix:// takes an absolute path")
        return [Endpoint("unix", path=path)]
    if target.startswith("unix:"):
        path = unquote(target[len("unix:"):])
        if not path:
            raise ValueError(f"bad target {target!r}: no path")
        return [Endpoint("unix", path=path if path.startswith("/") else os.path.abspath(path))]
    if target.startswith("unix-abstract:"):
        # A name in Linux's abstract socket namespace (no file): NUL, then the name.
        name = unquote(target[len("unix-abstract:"):])
        if not name:
            raise ValueError(f"bad target {target!r}: no name")
        return [Endpoint("unix", path="\0" + name)]
    if target.startswith("ipv4:") or target.startswith("ipv6:"):
        return [_host_port(part, None, target) for part in target[5:].split(",") if part]
    if target.startswith("dns:"):
        rest = target[4:]
        if rest.startswith("//"):
            authority, _, rest = rest[2:].partition("/")
        return [_host_port(rest, 443, target)]
    return [_host_port(target, 443, target)]


def parse_server_address(address: str) -> Endpoint:
    """A server's listening address: ``host:port`` (port 0 = any), ``[::]:port``,
    ``unix:path``, ``unix-abstract:name``."""
    if address.startswith("unix:") or address.startswith("unix-abstract:"):
        return parse_target(address)[0]
    return _host_port(address, None, address, server=True)
