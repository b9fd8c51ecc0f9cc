"""`make bench`: figures for the test bed itself until the operator benchmarks land (issue: scale and speed)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from graphcred.testbed.bed import Bed


def main() -> None:
    starts = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as d:
            bed = Bed(Path(d))
            t0 = time.monotonic()
            bed.start()
            starts.append(time.monotonic() - t0)
            bed.stop()
    print(f"control-plane start (etcd + kube-apiserver + kube-controller-manager + issuer), 3 runs: "
          f"median {statistics.median(starts):.1f} s, min {min(starts):.1f} s, max {max(starts):.1f} s")


if __name__ == "__main__":
    main()
