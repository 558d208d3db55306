"""``python -m tests.server.fidelity [--url URL] [--store KIND]``: the differential report.

Without ``--url`` it starts ``engine serve`` (``--store``, default sqlite) on a fresh
database; the reference runs on a fresh database either way. Prints the score by family
and every difference (markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.server.fidelity.backends import HttpServer, ReferenceServer
from tests.server.fidelity.compare import report, run
from tests.server.fidelity.scenarios import all_steps


@contextlib.contextmanager
def _engine(url: str | None, store: str, folder: Path) -> Iterator[str]:
    if url:
        yield url
        return
    from engine.server import serve_subprocess

    with serve_subprocess(folder / "engine.db", store=store) as served:
        yield served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running trace server (default: start engine serve)")
    parser.add_argument("--store", default="sqlite", help="engine serve --store when started here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-fidelity-") as tmp:
        folder = Path(tmp)
        reference = ReferenceServer(folder / "reference.db")
        try:
            with _engine(args.url, args.store, folder) as url:
                ours = HttpServer(url)
                try:
                    outcomes = run(all_steps(), ours, reference)
                finally:
                    ours.close()
        finally:
            reference.close()
    print(report(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
