"""Which machine a process runs on, as an opaque token a server advertises in ``/server_info``.

Two processes with the same token run on one kernel: a body between them never leaves
memory (loopback, or a container bridge), so compressing it costs CPU the producers and the
server need and saves nothing. The sender compares ``engine serve``'s token with its own to
decide ``compression = "auto"``. The token is a keyed hash of the kernel's boot id (never the
id itself): it changes at every boot and names nothing about the machine. None where the
boot id cannot be read (not Linux): then the server is taken to be elsewhere.
"""

from __future__ import annotations

import functools
import hashlib
import sys

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_KEY = b"engine-machine-token-v1"


@functools.lru_cache(maxsize=1)
def machine_token() -> str | None:
    """This machine's token (24 hex digits), or None when it has no readable boot id."""
    try:
        with open(BOOT_ID_PATH, "rb") as f:
            boot_id = f.read().strip()
    except OSError:
        return None
    if not boot_id:
        return None
    return hashlib.blake2b(boot_id, key=_KEY, digest_size=12).hexdigest()


def same_machine(server_info: object) -> bool:
    """Whether a ``/server_info`` answer says the server runs on this machine."""
    ours = machine_token()
    theirs = server_info.get("machine") if isinstance(server_info, dict) else None
    return ours is not None and theirs == ours


def platform_problem() -> str | None:
    """Why an engine cannot run its producers and sender on this system, or None (Linux).

    They share memory and tell a live process from a dead one (or from a later process
    given the same pid) by ``/proc``'s start times; elsewhere every producer would look
    dead to its sender, which would free a slot still being written. Only Linux is tested."""
    if sys.platform.startswith("linux"):
        return None
    return (f"the engine runs on Linux; this system is {sys.platform!r} (its producers and "
            "sender rely on Linux's /proc and shared memory): trace from Linux (a machine, "
            "a container or a VM)")
