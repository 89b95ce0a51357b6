"""How many times a 16 MiB unary echo copies its payload, and what it costs in page faults.

    python tools/count_copies.py [--lanes tcp] [--echoes 3] [--size-mib 16] [--loop uvloop]

A server and a client in one process echo a message of ``--size-mib`` MiB ``--echoes``
times on ``--lanes`` (after one echo that grows windows and buffers). The process runs
under ``strace`` with glibc's mmap threshold fixed at 32 KiB, so every allocation of
32 KiB or more is an ``mmap`` (or an ``mremap`` when one grows) that strace sees,
whatever allocates it: Python objects, the event loop's read buffers, protobuf. The
bytes so allocated during the echoes, divided by the payload bytes moved (two
directions per echo), are the user-space copies per direction; the kernel's copies
(socket buffers) are not counted. A second run without strace gives page faults
(``ru_minflt``) and milliseconds per echo.

Prints one JSON line: {"copies_per_direction", "minflt_per_echo", "ms_per_echo", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
THRESHOLD = 32 * 1024
# The two markers around the counted echoes: syscalls nothing else here makes.
_MARK = 0o027


def _mark() -> None:
    os.umask(os.umask(_MARK))


async def _echoes(lanes: str, echoes: int, size: int, root: str) -> dict[str, float]:
    sys.path.insert(0, root)
    import rpc
    from examples.echo import echo_pb2, echo_pb2_grpc
    from tests._support import serve

    class Echo(echo_pb2_grpc.EchoServicer):
        async def Unary(self, request: echo_pb2.EchoMessage, context: object) -> echo_pb2.EchoMessage:
            return request      # as the bench's: no copy of its own

    options = [("grpc.max_send_message_length", 4 * size),
               ("grpc.max_receive_message_length", 4 * size)]
    request = echo_pb2.EchoMessage(payload=os.urandom(size))
    async with serve(Echo(), lanes=lanes, options=options) as served:
        channel = rpc.insecure_channel(served.target, options=[*options, ("lanerpc.lanes", lanes)])
        stub = echo_pb2_grpc.EchoStub(channel)
        await asyncio.wait_for(stub.Unary(request), 60)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        _mark()
        for _ in range(echoes):
            await asyncio.wait_for(stub.Unary(request), 60)
        _mark()
        elapsed = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        lane = channel.lane
        await channel.close()
    return {"lane": lane, "minflt_per_echo": faults / echoes, "ms_per_echo": elapsed / echoes * 1e3}


def _child(args: argparse.Namespace) -> None:
    coro = _echoes(args.lanes, args.echoes, args.size_mib * MIB, args.root)
    if args.loop == "uvloop":
        import uvloop
        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


_CALL = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\w+)\((.*)\)\s+=\s+(\S+)")


def allocated_between_marks(trace: str) -> int:
    """Bytes mapped (mmap, and mremap's growth) between the two umask marks."""
    total, inside = 0, False
    for line in trace.splitlines():
        m = _CALL.match(line)
        if not m:
            continue
        name, argv, result = m.groups()
        if name == "umask" and argv.strip() == oct(_MARK).replace("0o", "0"):
            if inside:
                return total
            inside = True
        elif inside and name == "mmap" and "MAP_ANONYMOUS" in argv and result != "-1":
            total += int(argv.split(",")[1])
        elif inside and name == "mremap":
            parts = [p.strip() for p in argv.split(",")]
            total += max(0, int(parts[2]) - int(parts[1]))
    raise RuntimeError("the marks around the echoes were not both seen")


def measure(lanes: str, echoes: int, size_mib: int, loop: str, root: str = ROOT) -> dict[str, float]:
    me = [sys.executable, os.path.abspath(__file__), "--child", "--lanes", lanes,
          "--echoes", str(echoes), "--size-mib", str(size_mib), "--loop", loop, "--root", root]
    plain = subprocess.run(me, capture_output=True, text=True, timeout=600, cwd=root)
    if plain.returncode:
        raise RuntimeError(plain.stderr)
    result = json.loads(plain.stdout.splitlines()[-1])
    strace = shutil.which("strace")
    if strace is None:
        result["copies_per_direction"] = None
        return result
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(THRESHOLD)}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "trace")
        traced = subprocess.run(
            [strace, "-f", "-e", "trace=mmap,mremap,umask", "-e", "signal=none", "-o", out, *me],
            capture_output=True, text=True, timeout=600, cwd=root, env=env)
        if traced.returncode:
            raise RuntimeError(traced.stderr)
        with open(out) as f:
            allocated = allocated_between_marks(f.read())
    result["copies_per_direction"] = allocated / (echoes * 2 * size_mib * MIB)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", default="tcp")
    parser.add_argument("--echoes", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--root", default=ROOT,
                        help="the checkout whose rpc is measured (default: this one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0
    print(json.dumps(measure(args.lanes, args.echoes, args.size_mib, args.loop, args.root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
