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
