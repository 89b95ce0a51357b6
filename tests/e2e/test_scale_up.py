"""A name that grows from one address to three while its servers rotate connections.

The clients (a lanerpc channel and a grpc.aio channel, side by side) run in a mount
namespace of their own whose /etc/hosts is a file this test appends to: the system
resolver (glibc's ``files`` source, which returns every address listed for a name)
answers the name with one address, then three. The servers send GOAWAY to every
connection about a second old (``grpc.max_connection_age_ms=1000``); each GOAWAY makes
a round_robin channel resolve again, so both must reach all three servers within 5 s
of the change.

Both channels get ``grpc.dns_min_time_between_resolutions_ms=500``: with gRPC's
default (30 s since the last lookup) the first GOAWAYs would come too soon after the
channel's first lookup, and the new addresses would wait out those 30 s.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time

from tests._support import within
from tests.e2e._server_proc import ServerProc
from tests.e2e.conftest import need_root_and

SPREAD_WITHIN = 5.0       # seconds from the change until every server has had a call
DNS_MIN_MS = 500
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")   # all on lo: three servers, one port


class ScaleClient(ServerProc):
    """tests/e2e/_scale_client.py in its own process, stopped by its pid."""

    module = "tests.e2e._scale_client"

    def __init__(self, *args: str, prefix: tuple[str, ...]) -> None:
        super().__init__(*args, prefix=prefix)
        self.first_call: dict[int, float] = {}   # server pid -> when it first answered

    async def until_served_by(self, pids: set[int]) -> None:
        """Read the client's lines until each of ``pids`` has answered it."""
        assert self.proc is not None and self.proc.stdout is not None
        while not pids <= set(self.first_call):
            line = await self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"client exited (rc {self.proc.returncode}) having "
                                     f"reached only {sorted(self.first_call)}")
            seen = json.loads(line)
            self.first_call[seen["server"]] = seen["t"]


async def _servers_on_one_port(attempts: int = 3) -> list[ServerProc]:
    """A server on each of ADDRESSES, all on the port the first one was given (a name
    has one port). Another process may hold that port on another address: then again."""
    for attempt in range(attempts):
        started: list[ServerProc] = []
        try:
            port = 0
            for address in ADDRESSES:
                server = ServerProc("--address", f"{address}:{port}",
                                    "--option", "grpc.max_connection_age_ms=1000")
                started.append(server)
                await server.start()
                port = server.port
            return started
        except AssertionError:       # exited before it was ready: the port is taken
            for server in started:
                await server.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _own_hosts_prefix(hosts: str, host_conf: str) -> tuple[str, ...]:
    """A command prefix: what follows runs in a new mount namespace whose /etc/hosts and
    /etc/host.conf are these files (gone with the namespace when its process exits)."""
    script = (f"mount --bind {hosts} /etc/hosts && mount --bind {host_conf} /etc/host.conf"
              ' && exec "$@"')
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")


async def test_name_grows_to_three_addresses_all_servers_get_calls_within_5s(runtime_dir):
    need_root_and("unshare", "mount")
    name = f"lanerpc-scale-{secrets.token_hex(3)}.test"
    directory = tempfile.mkdtemp(prefix="lrscale-")
    hosts, host_conf = f"{directory}/hosts", f"{directory}/host.conf"
    with open("/etc/hosts") as system_hosts, open(hosts, "w") as own:
        own.write(system_hosts.read().rstrip("\n") + f"\n{ADDRESSES[0]} {name}\n")
    with open(host_conf, "w") as conf:
        conf.write("multi on\n")     # every address of a name (glibc's default since 2.26)
    servers: list[ServerProc] = []
    clients: list[ScaleClient] = []
    try:
        servers = await _servers_on_one_port()
        port = servers[0].port
        prefix = _own_hosts_prefix(hosts, host_conf)
        for kind in ("lanerpc", "grpc"):
            clients.append(await ScaleClient(f"{name}:{port}", "--kind", kind,
                                             "--dns-min-ms", str(DNS_MIN_MS), prefix=prefix).start())
        first = servers[0].pid
        await within(asyncio.gather(*(c.until_served_by({first}) for c in clients)), 5)
        assert all(set(c.first_call) == {first} for c in clients)   # one address: one server

        with open(hosts, "a") as own:     # in place: the bind mount holds this inode
            own.write("".join(f"{address} {name}\n" for address in ADDRESSES[1:]))
        changed = time.monotonic()
        everyone = {server.pid for server in servers}
        await within(asyncio.gather(*(c.until_served_by(everyone) for c in clients)),
                     SPREAD_WITHIN + 1)
        for kind, client in zip(("lanerpc", "grpc.aio"), clients):
            spread = max(client.first_call.values()) - changed
            print(f"{kind}: all three servers had a call {spread:.2f} s after the change")
            assert spread <= SPREAD_WITHIN, (kind, spread)
    finally:
        for process in [*clients, *servers]:
            await process.stop()
        shutil.rmtree(directory, ignore_errors=True)
