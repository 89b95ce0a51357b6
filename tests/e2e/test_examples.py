"""The examples run as their READMEs say, each with one command: examples/helloworld
(server and client), examples/route_guide (all four call kinds) and examples/worker_pool
(spawned workers against grpc.aio). Every process is stopped by its pid."""

from __future__ import annotations

import asyncio
import os
import re

from tests.e2e.conftest import PYTHON, ROOT, child_env, run_child


async def test_route_guide_makes_a_call_of_each_kind(runtime_dir: str) -> None:
    code, out, err = await run_child(PYTHON, "-m", "examples.route_guide", timeout=60)
    assert code == 0, err[-2000:]
    assert "GetFeature (41.2346, -73.8765): Lighthouse at Cape Orrin" in out
    assert "GetFeature (0.0000, 0.0000): no feature" in out
    assert "ListFeatures: 5 features in the rectangle" in out
    assert re.search(r"RecordRoute: 8 points, \d+ features, \d+ m", out), out
    assert re.findall(r"RouteChat: got '([^']*)'", out) == ["first at here", "first at there"]
    assert re.search(r"^lane: (shm|unix)$", out, re.M), out
    assert os.listdir(runtime_dir) == []        # the server stopped cleanly


async def test_worker_pool_fans_out_and_compares_with_grpc(runtime_dir: str) -> None:
    code, out, err = await run_child(PYTHON, "-m", "examples.worker_pool", "--workers", "2",
                                     "--tasks", "100", "--repeat", "3", timeout=120)
    assert code == 0, err[-2000:]
    lanes = re.findall(r"lanerpc worker pid \d+: lane (\w+)", out)
    assert lanes and set(lanes) <= {"shm", "unix"} and len(lanes) == 2, out
    assert re.search(r"lanerpc: all 300 results checked \(pid \d+: 150, pid \d+: 150\)", out), out
    assert re.search(r"grpc.aio: all 300 results checked \(pid \d+: 150, pid \d+: 150\)", out), out
    assert len(re.findall(r"^round \d: lanerpc \d+ tasks/s, grpc.aio \d+ tasks/s$", out, re.M)) == 3, out
    assert re.search(r"lanerpc is [\d.]+x grpc.aio", out), out
    assert os.listdir(runtime_dir) == []        # the workers removed their upgrade sockets


async def test_helloworld_server_and_client(runtime_dir: str) -> None:
    server = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "examples.helloworld.server", "127.0.0.1:0", cwd=ROOT, env=child_env(),
        stdout=asyncio.subprocess.PIPE)
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        code, out, err = await run_child(PYTHON, "-m", "examples.helloworld.client",
                                         line.removeprefix("listening on "))
        assert code == 0, err[-2000:]
        assert out.splitlines()[:4] == ["Hello, you!", "Hello, you!", "Bonjour, you!",
                                        "Hallo, you!"], out
        assert re.search(r"^lane: (shm|unix)$", out, re.M), out
        server.terminate()
        assert await asyncio.wait_for(server.wait(), 10) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
