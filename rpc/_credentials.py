"""TLS and local credentials that serve both lanerpc's own lanes and grpcio's ``grpc://`` ports.

grpc's credentials objects keep their keys inside grpcio's C core: nothing in Python
can read them back to build an ``ssl.SSLContext``. So ``rpc.ssl_channel_credentials``
and ``rpc.ssl_server_credentials`` (grpc's signatures) keep the PEM bytes themselves
and are also grpc credentials objects (subclasses carrying the same inner object grpc
would make): one object configures a lanerpc TLS port or channel and a grpcio one.

The contexts built here:

- allow TLS 1.2 and later only;
- name lanerpc's protocol in ALPN (:data:`ALPN`), so neither side mistakes the other
  for an HTTP/2 (gRPC) peer: a gRPC client refuses a server that does not select
  ``h2``, and a lanerpc client or server refuses a peer that did not agree on ours;
- verify the server's name (SNI and the certificate's names: the target's host, or
  ``grpc.ssl_target_name_override``) and, with ``require_client_auth``, the client's
  certificate against the given roots, during the handshake: a refused client never
  gets a connection, so no handler runs for it.

``rpc.local_channel_credentials`` and ``rpc.local_server_credentials`` are grpc's
local credentials: plaintext, but only between peers on this host (a ``unix:`` socket
for ``UDS``; loopback addresses for ``LOCAL_TCP``), which is what makes call
credentials acceptable on them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence

import grpc

from rpc._options import Options
from rpc._target import Endpoint

ALPN = "lanerpc"

# grpc's auth context keys for a TLS peer (grpc's ssl transport security).
SECURITY_TYPE = "transport_security_type"
COMMON_NAME = "x509_common_name"
SUBJECT_ALT_NAME = "x509_subject_alternative_name"
PEM_CERT = "x509_pem_cert"
SECURITY_LEVEL = "security_level"

CertificateChainPairs = Sequence[tuple[bytes, bytes]]

# grpc's auth context for a peer of local credentials (grpc's local security connector:
# the same security level for UDS and LOCAL_TCP).
LOCAL_PROPERTIES = {SECURITY_TYPE: b"local", SECURITY_LEVEL: b"TSI_PRIVACY_AND_INTEGRITY"}


def _pem(value: bytes | str | None, what: str) -> bytes | None:
    """PEM text as bytes (grpc takes bytes; str is forgiven), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be PEM bytes; got {type(value).__name__}")
    if b"-----BEGIN" not in value:
        raise ValueError(f"{what} is not PEM (no -----BEGIN line)")
    return value


def _memfds(*contents: bytes) -> list[int] | None:
    """Anonymous in-memory files holding ``contents``; None where there are none."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    fds: list[int] = []
    try:
        for data in contents:
            fd = os.memfd_create("lanerpc-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
    except OSError:
        for fd in fds:
            os.close(fd)
        return None
    return fds


@contextlib.contextmanager
def _pem_files(certificate_chain: bytes, private_key: bytes) -> Iterator[tuple[str, str]]:
    """Paths holding the chain and the key, for ``SSLContext.load_cert_chain`` (which
    reads files only). In memory (memfd) where the kernel has it, so the key never
    touches a disk; else in a private 0700 directory removed at once."""
    fds = _memfds(certificate_chain, private_key)
    if fds is not None:
        try:
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="lanerpc-tls-") as directory:
        paths = []
        for name, data in (("chain.pem", certificate_chain), ("key.pem", private_key)):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
            paths.append(path)
        yield paths[0], paths[1]


def _load_pair(context: ssl.SSLContext, certificate_chain: bytes, private_key: bytes,
               what: str) -> None:
    with _pem_files(certificate_chain, private_key) as (chain_path, key_path):
        try:
            context.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as exc:
            raise ValueError(f"{what}: the private key and certificate chain can't be "
                             f"loaded ({exc})") from exc


def _base(context: ssl.SSLContext, roots: bytes | None, what: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN])
    if roots is not None:
        try:
            context.load_verify_locations(cadata=roots.decode())
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{what}: root_certificates can't be loaded ({exc})") from exc
    return context


class SslChannelCredentials(grpc.ChannelCredentials):
    """``rpc.ssl_channel_credentials(...)``: grpc's ssl channel credentials (usable with
    grpcio, grpc:// targets) that also build lanerpc's client ``ssl.SSLContext``."""

    def __init__(self, root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None) -> None:
        self.root_certificates = _pem(root_certificates, "root_certificates")
        self.private_key = _pem(private_key, "private_key")
        self.certificate_chain = _pem(certificate_chain, "certificate_chain")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("ssl_channel_credentials: private_key and certificate_chain "
                             "go together (a client certificate needs its key)")
        inner = grpc.ssl_channel_credentials(self.root_certificates, self.private_key,
                                             self.certificate_chain)
        # grpc's own ChannelCredentials wraps its core object the same way.
        super().__init__(inner._credentials)  # type: ignore[attr-defined]  # private in the stubs
        self._context: ssl.SSLContext | None = None

    def client_context(self) -> ssl.SSLContext:
        """The client's context, built once: roots given, else the system's."""
        if self._context is None:
            context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self.root_certificates,
                            "ssl_channel_credentials")
            if self.root_certificates is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            if self.private_key is not None and self.certificate_chain is not None:
                _load_pair(context, self.certificate_chain, self.private_key,
                           "ssl_channel_credentials")
                context.lanerpc_has_client_cert = True  # type: ignore[attr-defined]  # for refusal_reason
            self._context = context
        return self._context


class SslServerCredentials(grpc.ServerCredentials):
    """``rpc.ssl_server_credentials(...)``: grpc's ssl server credentials (usable with
    grpcio's ports, ``grpc://`` addresses) that also build lanerpc's server context."""

    def __init__(self, private_key_certificate_chain_pairs: CertificateChainPairs,
                 root_certificates: bytes | None = None,
                 require_client_auth: bool = False) -> None:
        pairs = [(_pem(key, "private key"), _pem(chain, "certificate chain"))
                 for key, chain in private_key_certificate_chain_pairs]
        self.pairs: list[tuple[bytes, bytes]] = [(key, chain) for key, chain in pairs
                                                 if key is not None and chain is not None]
        if len(self.pairs) != len(pairs):
            raise ValueError("ssl_server_credentials: every pair needs a private key and "
                             "a certificate chain")
        self.root_certificates = _pem(root_certificates, "root_certificates")
        self.require_client_auth = bool(require_client_auth)
        # grpc checks its arguments here (no pairs, client auth without roots).
        inner = grpc.ssl_server_credentials(self.pairs, self.root_certificates,
                                            self.require_client_auth)
        super().__init__(inner._credentials)  # type: ignore[attr-defined]  # private in the stubs
        self._context: ssl.SSLContext | None = None

    def server_context(self) -> ssl.SSLContext:
        """The server's context, built once. lanerpc's TLS lane serves one certificate
        chain: more than one (grpc picks among them by SNI) is refused, not half-used."""
        if self._context is None:
            if len(self.pairs) != 1:
                raise ValueError(
                    f"a lanerpc TLS port serves one certificate chain; these credentials "
                    f"have {len(self.pairs)}: serve them on a grpc:// port, or use one pair")
            context = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.root_certificates,
                            "ssl_server_credentials")
            # As grpc: without require_client_auth no client certificate is asked for.
            context.verify_mode = (ssl.CERT_REQUIRED if self.require_client_auth
                                   else ssl.CERT_NONE)
            key, chain = self.pairs[0]
            _load_pair(context, chain, key, "ssl_server_credentials")
            self._context = context
        return self._context


def ssl_channel_credentials(root_certificates: bytes | None = None,
                            private_key: bytes | None = None,
                            certificate_chain: bytes | None = None) -> SslChannelCredentials:
    """grpc's ``ssl_channel_credentials``, for lanerpc TLS channels and grpcio's alike."""
    return SslChannelCredentials(root_certificates, private_key, certificate_chain)


def ssl_server_credentials(private_key_certificate_chain_pairs: CertificateChainPairs,
                           root_certificates: bytes | None = None,
                           require_client_auth: bool = False) -> SslServerCredentials:
    """grpc's ``ssl_server_credentials``, for lanerpc TLS ports and ``grpc://`` ports alike."""
    return SslServerCredentials(private_key_certificate_chain_pairs, root_certificates,
                                require_client_auth)


def refusal_reason(context: ssl.SSLContext) -> str:
    """Why a TLS server most likely closed a connection right after the handshake,
    before its first frame: it refused our client certificate. (The loop's TLS closes a
    connection whose handshake failed without sending the alert, and with TLS 1.3 the
    client's side of the handshake is done before the server checks the certificate;
    so the client names the likely problem itself.)"""
    if not getattr(context, "lanerpc_has_client_cert", False):
        return ("certificate required: the server closed the TLS connection before "
                "answering; it requires a client certificate and none was sent")
    return ("bad certificate: the server closed the TLS connection before answering; it "
            "refused this client's certificate (not signed by the server's "
            "root_certificates, expired or not yet valid, or not for client auth)")


def check_alpn(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, peer: str) -> None:
    """Raise ConnectionError unless the TLS peer agreed on lanerpc's protocol."""
    chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    if chosen != ALPN:
        raise ConnectionError(
            f"TLS peer {peer} did not agree on ALPN {ALPN!r} (selected: {chosen}); it is not "
            f"a lanerpc TLS endpoint (a gRPC/HTTP2 one is dialled with grpc://)")


def _pairs(items: object) -> list[tuple[str, object]]:
    """The (name, value) pairs of a part of ``getpeercert()``'s dict (typed loosely)."""
    if not isinstance(items, tuple):
        return []
    return [(str(item[0]), item[1]) for item in items
            if isinstance(item, tuple) and len(item) == 2]


# grpc's keys for each kind of subject alternative name, by getpeercert()'s kinds.
_SAN_KEYS = {"DNS": "peer_dns", "URI": "peer_uri", "email": "peer_email", "IP Address": "peer_ip"}
SPIFFE_ID = "peer_spiffe_id"


def _san_value(kind: str, value: object) -> bytes:
    """A SAN as grpc spells it: an IP address in its short form (getpeercert() writes
    IPv6 ones out in full), the others as they are."""
    text = str(value)
    if kind == "IP Address":
        with contextlib.suppress(ValueError):
            text = str(ipaddress.ip_address(text.strip()))
    return text.encode()


def _spiffe_id(uris: list[bytes]) -> bytes | None:
    """The peer's SPIFFE ID, as grpc finds it: its one URI SAN, when that is one
    (``spiffe://`` trust domain of at most 255 bytes, a path, 2048 bytes at most)."""
    if len(uris) != 1:
        return None
    uri = uris[0]
    parts = uri.split(b"/")
    if (not uri.startswith(b"spiffe://") or len(uri) > 2048 or len(parts) < 4
            or not parts[2] or len(parts[2]) > 255 or not parts[3]):
        return None
    return uri


def peer_properties(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, list[bytes]]:
    """A TLS connection's auth context, with grpc's keys: ``transport_security_type``
    ``ssl``, ``security_level``, ``ssl_tls_version``, ``ssl_session_reused``, and for
    a verified client certificate its common name, subject alternative names (all, and
    by kind: ``peer_dns``, ``peer_uri``, ``peer_email``, ``peer_ip``, ``peer_spiffe_id``)
    and PEM."""
    props: dict[str, list[bytes]] = {
        SECURITY_TYPE: [b"ssl"],
        SECURITY_LEVEL: [b"TSI_PRIVACY_AND_INTEGRITY"],
        "ssl_session_reused": [b"true" if ssl_object.session_reused else b"false"],
    }
    version = ssl_object.version()
    if version:
        props["ssl_tls_version"] = [version.encode()]
    cert = ssl_object.getpeercert()      # a dict only when the peer's cert was verified
    if not cert:
        return props
    names: list[bytes] = []
    for kind, value in _pairs(cert.get("subjectAltName", ())):
        if kind in _SAN_KEYS:
            name = _san_value(kind, value)
            names.append(name)
            props.setdefault(_SAN_KEYS[kind], []).append(name)
    spiffe = _spiffe_id(props.get("peer_uri", []))
    if spiffe is not None:
        props[SPIFFE_ID] = [spiffe]
    for rdn in cert.get("subject", ()):
        for key, value in _pairs(rdn):
            if key == "commonName":
                props[COMMON_NAME] = [str(value).encode()]
    if names:
        props[SUBJECT_ALT_NAME] = names
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        props[PEM_CERT] = [ssl.DER_cert_to_PEM_cert(der).encode()]
    return props


def identity_key(props: dict[str, list[bytes]]) -> str | None:
    """Which key names the peer, as grpc chooses: the SANs, else the common name; for
    local credentials the transport security type (``local``)."""
    for key in (SUBJECT_ALT_NAME, COMMON_NAME):
        if props.get(key):
            return key
    if props.get(SECURITY_TYPE) == [LOCAL_PROPERTIES[SECURITY_TYPE]]:
        return SECURITY_TYPE
    return None


# ------------------------------------------------------------------ local credentials


class NotLocal(ConnectionError):
    """A peer of a local credentials' port or channel that is not on this host."""


class LocalChannelCredentials(grpc.ChannelCredentials):
    """``rpc.local_channel_credentials(...)``: grpc's local channel credentials (usable
    with grpcio, ``grpc://`` targets) that a lanerpc channel also reads."""

    def __init__(self, local_connect_type: grpc.LocalConnectionType
                 = grpc.LocalConnectionType.LOCAL_TCP) -> None:
        self.local_connect_type = _connect_type(local_connect_type)
        inner = grpc.local_channel_credentials(self.local_connect_type)
        super().__init__(inner._credentials)  # type: ignore[attr-defined]  # private in the stubs


class LocalServerCredentials(grpc.ServerCredentials):
    """``rpc.local_server_credentials(...)``: grpc's local server credentials (usable
    with grpcio's ports, ``grpc://`` addresses) that a lanerpc port also reads."""

    def __init__(self, local_connect_type: grpc.LocalConnectionType
                 = grpc.LocalConnectionType.LOCAL_TCP) -> None:
        self.local_connect_type = _connect_type(local_connect_type)
        inner = grpc.local_server_credentials(self.local_connect_type)
        super().__init__(inner._credentials)  # type: ignore[attr-defined]  # private in the stubs


def _connect_type(value: object) -> grpc.LocalConnectionType:
    if not isinstance(value, grpc.LocalConnectionType):
        raise TypeError(f"local_connect_type must be a grpc.LocalConnectionType; got {value!r}")
    return value


def local_channel_credentials(local_connect_type: grpc.LocalConnectionType
                              = grpc.LocalConnectionType.LOCAL_TCP) -> LocalChannelCredentials:
    """grpc's ``local_channel_credentials``, for lanerpc channels and grpcio's alike."""
    return LocalChannelCredentials(local_connect_type)


def local_server_credentials(local_connect_type: grpc.LocalConnectionType
                             = grpc.LocalConnectionType.LOCAL_TCP) -> LocalServerCredentials:
    """grpc's ``local_server_credentials``, for lanerpc ports and ``grpc://`` ports alike."""
    return LocalServerCredentials(local_connect_type)


def local_connect_type(credentials: object, target: str) -> grpc.LocalConnectionType | None:
    """The connection type of local channel credentials, or None for other credentials.

    grpc's own object (``grpc.local_channel_credentials(...)``) is recognised by its core
    object's class but does not say which type it was made with: it is read from the
    target (``unix:`` targets are UDS, others LOCAL_TCP), which is the one type that
    can succeed there."""
    if isinstance(credentials, LocalChannelCredentials):
        return credentials.local_connect_type
    inner = getattr(credentials, "_credentials", None)
    if isinstance(credentials, grpc.ChannelCredentials) \
            and type(inner).__name__ == "LocalChannelCredentials":
        return (grpc.LocalConnectionType.UDS if target.startswith("unix")
                else grpc.LocalConnectionType.LOCAL_TCP)
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (an IPv4-mapped one included), as grpc's
    local credentials require of a LOCAL_TCP peer."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_local_peer(peername: object, what: str) -> None:
    """Raise :class:`NotLocal` unless a TCP peer (a socket's peername) is on loopback."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if not isinstance(host, str) or not is_loopback(host):
        raise NotLocal(f"{what}: local credentials (LOCAL_TCP) take loopback peers only; "
                       f"{peername} is not one")


def local_properties() -> dict[str, list[bytes]]:
    """The auth context grpc's local credentials give (lanerpc adds the lane, and on the
    unix and shm lanes the peer's pid, uid and gid)."""
    return {key: [value] for key, value in LOCAL_PROPERTIES.items()}


def channel_options(options: Options, credentials: grpc.ChannelCredentials,
                    endpoints: Sequence[Endpoint], target: str) -> Options:
    """A lanerpc channel's options with its TLS context, or with the local credentials'
    rule. Credentials lanerpc can't read (grpc's ssl ones), TLS to a ``unix:`` target
    and local credentials to a target they can't reach are refused, not dropped."""
    connect_type = local_connect_type(credentials, target)
    if connect_type is not None:
        return _local_options(options, connect_type, endpoints, target)
    if not isinstance(credentials, SslChannelCredentials):
        raise ValueError("a lanerpc Channel takes rpc.ssl_channel_credentials(...) (grpc's "
                         "credentials keep their keys inside grpcio: rpc.secure_channel "
                         "gives those a grpcio channel)")
    if any(endpoint.lane == "unix" for endpoint in endpoints):
        raise ValueError("lanerpc's TLS lane is TCP: a unix: target is dialled with "
                         "rpc.insecure_channel (the server admits its clients by uid)")
    # The name the server's certificate must carry is the target's, not the address a
    # name resolves to (a target of IP addresses: each address is its own name).
    name = None
    if len(endpoints) == 1 and endpoints[0].lane == "tcp" and not _is_ip(endpoints[0].host):
        name = endpoints[0].host
    return dataclasses.replace(options, tls=credentials.client_context(), tls_server_name=name)


def _local_options(options: Options, connect_type: grpc.LocalConnectionType,
                   endpoints: Sequence[Endpoint], target: str) -> Options:
    """Local credentials: plaintext, to a ``unix:`` target (UDS) or to loopback
    addresses (LOCAL_TCP: a name is checked once resolved, when dialled)."""
    lanes = {endpoint.lane for endpoint in endpoints}
    if connect_type is grpc.LocalConnectionType.UDS:
        if lanes != {"unix"}:
            raise ValueError(f"local_channel_credentials(UDS) dials unix: targets only; "
                             f"{target!r} is not one (LOCAL_TCP is for loopback addresses)")
        return options
    if lanes != {"tcp"}:
        raise ValueError(f"local_channel_credentials(LOCAL_TCP) dials loopback TCP addresses "
                         f"only; {target!r} is not one (UDS is for unix: targets)")
    for endpoint in endpoints:
        if _is_ip(endpoint.host) and not is_loopback(endpoint.host):
            raise ValueError(f"local_channel_credentials(LOCAL_TCP) dials loopback addresses "
                             f"only; {endpoint.host} is not one")
    return dataclasses.replace(options, local_tcp=True)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
