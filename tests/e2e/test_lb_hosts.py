"""round_robin across three "hosts": this one, and two network namespaces (each with its
own mount namespace, so its upgrade socket and /dev/shm are not this host's). The
backend on this host is reached over shm, the two others over tcp: each subchannel
chose its own lane. lanerpc_local_first sends every call to the local one."""

from __future__ import annotations

import os
import subprocess

import pytest

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import Echo, msg, serve, wait_until, within
from tests.e2e._server_proc import ServerProc
from tests.e2e.conftest import need_root_and
from tests.e2e.test_upgrade import _NetNamespace, _private_tmp, private_runtime_dir  # noqa: F401


def _namespaces(count: int) -> list[_NetNamespace]:
    """``count`` namespaces with distinct addresses; any made is removed on failure."""
    made: list[_NetNamespace] = []
    try:
        while len(made) < count:
            netns = _NetNamespace()
            if any(other.ns_ip == netns.ns_ip for other in made):
                continue
            made.append(netns.__enter__())
    except (subprocess.CalledProcessError, OSError) as exc:
        for netns in made:
            netns.__exit__()
        pytest.skip(f"can't make a network namespace here: {exc}")
    return made


async def test_round_robin_across_hosts_each_subchannel_on_its_own_lane(private_runtime_dir):
    need_root_and("ip", "unshare")
    namespaces = _namespaces(2)
    remotes: list[ServerProc] = []
    try:
        for netns in namespaces:
            prefix = ("ip", "netns", "exec", netns.name, *_private_tmp(private_runtime_dir))
            remotes.append(await ServerProc("--address", "0.0.0.0:0", prefix=prefix).start())
        async with serve(Echo()) as local:
            target = "ipv4:" + ",".join(
                [f"127.0.0.1:{local.port}"]
                + [f"{netns.ns_ip}:{server.port}" for netns, server in zip(namespaces, remotes)])
            lanes_by_pid = {os.getpid(): "shm", **{server.pid: "tcp" for server in remotes}}
            for policy, pids_wanted in (("round_robin", set(lanes_by_pid)),
                                        ("lanerpc_local_first", {os.getpid()})):
                async with rpc.insecure_channel(
                        target, options=[("grpc.lb_policy_name", policy)]) as channel:
                    await within(channel.channel_ready())
                    await wait_until(lambda: len(channel._balancer.links()) == 3)
                    stub = echo_pb2_grpc.EchoStub(channel)
                    seen: dict[int, int] = {}
                    for _ in range(9):
                        reply = await within(stub.Unary(msg(b"peer"), timeout=5))
                        _, lane, _, pid = reply.payload.decode().split("|")
                        assert lane == lanes_by_pid[int(pid)] == channel.lane, (pid, lane)
                        seen[int(pid)] = seen.get(int(pid), 0) + 1
                    assert set(seen) == pids_wanted, policy
                    if policy == "round_robin":
                        assert sorted(seen.values()) == [3, 3, 3]
    finally:
        for server in remotes:
            await server.stop()
        for netns in namespaces:
            netns.__exit__()
