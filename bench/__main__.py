"""`make bench` / `python -m bench [name ...]`: run every benchmark (or the named ones) in turn.

Each benchmark measures its own baseline in the same run and prints ratios against it; figures are
recorded in docs/performance.md.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in names:
        print(f"\n===== bench {name} =====", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{name}")
        saved = sys.argv
        sys.argv = [f"bench_{name}"]  # each benchmark parses its own flags; run with defaults
        try:
            module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"bench {name} FAILED: {exc!r}", file=sys.stderr)
        finally:
            sys.argv = saved
        print(f"===== bench {name}: {time.perf_counter() - started:.1f} s =====", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
