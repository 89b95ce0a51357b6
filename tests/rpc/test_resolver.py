"""The resolver: every A/AAAA record of a name, static addresses as they are, and
gRPC's limits on how often a name is looked up again."""

from __future__ import annotations

import socket

import pytest

from rpc import _options
from rpc._resolver import ResolutionError, Resolver
from rpc._target import Endpoint
from tests._support import within


def _records(*hosts: str):
    """A lookup serving ``hosts`` (as getaddrinfo would) and counting its calls."""
    asked: list[tuple[str, int]] = []

    async def lookup(host: str, port: int):
        asked.append((host, port))
        return [(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (h, port)) for h in hosts]

    return lookup, asked


async def test_a_name_resolves_to_all_its_records_in_order_without_duplicates():
    lookup, asked = _records("10.0.0.2", "10.0.0.1", "10.0.0.2", "fd00::1")
    resolver = Resolver("dns:///backends.example:8443", lookup=lookup)
    assert resolver.dynamic and resolver.static() is None
    found = await within(resolver.resolve(0.0))
    assert found == [Endpoint("tcp", host="10.0.0.2", port=8443),
                     Endpoint("tcp", host="10.0.0.1", port=8443),
                     Endpoint("tcp", host="fd00::1", port=8443)]
    assert asked == [("backends.example", 8443)]


async def test_a_plain_host_port_target_is_a_dns_name_with_port_443_by_default():
    lookup, asked = _records("10.0.0.1")
    assert await within(Resolver("backends.example", lookup=lookup).resolve(0.0)) == \
        [Endpoint("tcp", host="10.0.0.1", port=443)]
    assert asked == [("backends.example", 443)]


async def test_the_system_resolver_runs_off_the_loop_and_finds_localhost():
    found = await within(Resolver("localhost:5").resolve(0.0))
    assert Endpoint("tcp", host="127.0.0.1", port=5) in found


@pytest.mark.parametrize("target, expected", [
    ("ipv4:10.0.0.1:1,10.0.0.2:2", [Endpoint("tcp", host="10.0.0.1", port=1),
                                    Endpoint("tcp", host="10.0.0.2", port=2)]),
    ("ipv6:[::1]:7", [Endpoint("tcp", host="::1", port=7)]),
    ("127.0.0.1:9", [Endpoint("tcp", host="127.0.0.1", port=9)]),
    ("dns:///[::1]:9", [Endpoint("tcp", host="::1", port=9)]),
    ("unix:///tmp/x.sock", [Endpoint("unix", path="/tmp/x.sock")]),
])
def test_addresses_and_paths_need_no_lookup(target, expected):
    resolver = Resolver(target)
    assert not resolver.dynamic
    assert resolver.static() == expected


def test_a_dns_server_named_in_the_target_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="names a DNS server.*dns:///name:port"):
        Resolver("dns://8.8.8.8/backends.example:443")
    Resolver("dns:///backends.example:443")     # an empty authority is the system's


async def test_lookups_again_wait_the_minimum_interval():
    lookup, asked = _records("10.0.0.1")
    resolver = Resolver("backends.example:1", lookup=lookup)
    assert resolver.delay(100.0) == 0.0
    await within(resolver.resolve(100.0))
    assert resolver.delay(100.0) == 30.0          # gRPC's 30 s between resolutions
    assert resolver.delay(125.0) == 5.0
    assert resolver.delay(131.0) == 0.0
    assert _options.parse([("grpc.dns_min_time_between_resolutions_ms", 2000)]).dns_min_interval \
        == 2.0


async def test_a_failed_lookup_raises_and_is_retried_after_a_growing_backoff():
    async def failing(host: str, port: int):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = Resolver("nowhere.invalid:1", lookup=failing)
    with pytest.raises(ResolutionError, match="DNS resolution failed for nowhere.invalid:1"):
        await within(resolver.resolve(0.0))
    assert resolver.delay(0.0) == pytest.approx(1.0)
    with pytest.raises(ResolutionError):
        await within(resolver.resolve(1.0))
    assert resolver.delay(1.0) == pytest.approx(1.6)


async def test_a_name_without_records_is_a_failure():
    lookup, _ = _records()
    with pytest.raises(ResolutionError, match="no addresses"):
        await within(Resolver("empty.example:1", lookup=lookup).resolve(0.0))
