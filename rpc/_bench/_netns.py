"""A network namespace joined to the bench's by a veth pair, for the ``*-veth-*`` rows.

Those rows run their server inside the namespace (``ip netns exec NAME python ...``) and
dial it from the bench's namespace at the far end of the veth pair: every byte crosses
a network device with an Ethernet MTU and the kernel's IP path between two network
stacks, as it would between machines, without a second machine (no wire, no NIC: what
is measured is the software between two hosts, not a network's latency).

The bench makes the namespace for the round and removes it afterwards, also when the
round fails. It needs root and iproute2's ``ip``; without them the rows are "n/a" with
the reason.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from typing import Iterator

IP_TIMEOUT = 10.0
SUBNET = "10.233"     # /30s out of 10.233.0.0/16 (tests/e2e use 10.231)


def why_unavailable() -> str | None:
    """Why no namespace can be made here, or None when it can be tried."""
    if os.geteuid() != 0:
        return "needs root to make a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2's ip to make a network namespace"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT)


def _remove(name: str, host_if: str) -> None:
    """Delete the pair (deleting one end deletes both) and the namespace; never raises."""
    for args in (("link", "del", host_if), ("netns", "del", name)):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["ip", *args], capture_output=True, timeout=IP_TIMEOUT)


@contextlib.contextmanager
def veth_namespace() -> Iterator[tuple[str, str]]:
    """Make a namespace and a veth pair; yield (namespace name, its address).

    Raises RuntimeError naming the failed step when it can't be made (nothing is left
    behind then either)."""
    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"lrbench-{tag}", f"lrbh{tag}", f"lrbn{tag}"
    octet = int(tag[:2], 16)
    host_ip, ns_ip = f"{SUBNET}.{octet}.1", f"{SUBNET}.{octet}.2"
    steps = [
        ("netns", "add", name),
        ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
        ("link", "set", ns_if, "netns", name),
        ("addr", "add", f"{host_ip}/30", "dev", host_if),
        ("link", "set", host_if, "up"),
        ("-n", name, "addr", "add", f"{ns_ip}/30", "dev", ns_if),
        ("-n", name, "link", "set", ns_if, "up"),
        ("-n", name, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            try:
                _ip(*step)
            except subprocess.CalledProcessError as exc:
                said = exc.stderr.decode(errors="replace").strip()
                raise RuntimeError(f"ip {' '.join(step)}: {said or exc}") from None
            except (OSError, subprocess.SubprocessError) as exc:
                raise RuntimeError(f"ip {' '.join(step)}: {exc}") from None
        yield name, ns_ip
    finally:
        _remove(name, host_if)
