"""How long ``plan`` takes against a host with many regions (the aim: well under 100 ms at 10,000).

Run ``python bench/bench_planner.py``: it plans a ``strategy=host`` domain against
1,000 to 40,000 host regions and prints the best of several runs for each size, and
the time per region, so the growth (``O(n log n)``: one sort, one sweep, a
bisection per region) can be read off.  Timing lives here, never in the tests.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rmrrd.core.inventory import HostRegion, Inventory  # noqa: E402
from rmrrd.core.pci import Bdf  # noqa: E402
from rmrrd.core.planner import DomainRequest, plan  # noqa: E402
from rmrrd.core.ranges import PAGE_SIZE, Range  # noqa: E402
from rmrrd.core.xlcfg import RdmConfig, Strategy  # noqa: E402

SIZES = (1_000, 10_000, 40_000)
RUNS = 5


def host_with(count: int, seed: int = 1) -> Inventory:
    """``count`` regions of 1-16 pages spread over 16 GiB, some overlapping, some shared."""
    rng = random.Random(seed)
    regions = []
    for n in range(count):
        start = rng.randrange(0, (16 << 30) // PAGE_SIZE) * PAGE_SIZE
        devices = (Bdf(0, n % 256, n % 32, n % 8),)
        regions.append(HostRegion(Range(start, start + rng.randint(1, 16) * PAGE_SIZE), devices))
    return Inventory("bench", tuple(regions))


def best_of(host: Inventory, request: DomainRequest) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        plan(request, host, {})
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    request = DomainRequest(memory_mib=8192, rdm=RdmConfig(Strategy.HOST))
    print(f"{'regions':>8}  {'best ms':>8}  {'us/region':>9}")
    for count in SIZES:
        seconds = best_of(host_with(count), request)
        print(f"{count:>8}  {seconds * 1e3:>8.1f}  {seconds * 1e6 / count:>9.2f}")


if __name__ == "__main__":
    main()
