"""A py-spy profile of the operator while the bench measures it, and a summary a reader can put in a note.

`Profile(pid, path)` runs `py-spy record --gil --format raw` (collapsed stacks: one line a stack, then its sample
count) on the operator until stopped; `summary(path)` reads that back: where the samples are, by area (graphcred,
kopf, the Kubernetes client, JSON, TLS, ...) and by the function on top of the stack. `--gil`: only the thread
holding the GIL is sampled, so the samples are the Python work of the one process, whichever thread does it, and
their count against the wall time says how busy the GIL was (C code that releases it, such as TLS on a socket
already readable, is not counted). py-spy is not a dependency: `pip install py-spy` (it needs to be allowed to
ptrace the operator: root, or the same user with ptrace_scope 0).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

RATE = 50  # samples a second: enough for shares of a few percent over a minute, light on a 2-core machine

# first match wins, tried on each frame from the top of the stack down: the area a sample's time is charged to
AREAS = (
    ("json (de)serialisation", ("json/", "json.", "orjson")),
    ("TLS and sockets", ("ssl.py", "socket.py", "selectors.py")),
    ("HTTP (urllib3, requests)", ("urllib3/", "requests/", "http/client.py")),
    ("Kubernetes client (models, (de)serialisation)", ("kubernetes/client/",)),
    ("msal", ("msal/",)),
    ("kopf", ("kopf/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("graphcred", ("graphcred/",)),
    ("asyncio", ("asyncio/",)),
    ("threads, other", ("threading.py", "concurrent/")),
)


def py_spy() -> str | None:
    """The py-spy next to this interpreter (a venv's) or on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def profile_dir_for(profile_dir: Path | None, bench: str, n: int, per_app: int) -> Path | None:
    """Where one run's profiles go (made), or None without --profile."""
    if profile_dir is None:
        return None
    where = profile_dir / f"{bench}-n{n}-k{per_app}"
    where.mkdir(parents=True, exist_ok=True)
    return where


class Profile:
    def __init__(self, pid: int, path: Path) -> None:
        self.path = path
        exe = py_spy()
        if exe is None:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self._proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--output", str(path),
             "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._started = time.monotonic()
        self.wall = 0.0

    def stop(self) -> float:
        """py-spy writes its file when interrupted. Returns the seconds recorded (also in `wall`)."""
        self.wall = time.monotonic() - self._started
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        if not self.path.exists():
            print(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        else:
            self.path.with_suffix(".wall").write_text(f"{self.wall:.3f}\n")
        return self.wall


def _stacks(path: Path) -> Counter[tuple[str, ...]]:
    """Collapsed stacks, root first: 'frame;frame;frame count'; a frame is 'function (file:line)'."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def _area(frames: tuple[str, ...]) -> str:
    for frame in reversed(frames):  # the top of the stack first
        for area, marks in AREAS:
            if any(mark in frame for mark in marks):
                return area
    return "other"


def _short(frame: str) -> str:
    """'function (path/to/site-packages/pkg/mod.py:12)' -> 'function (pkg/mod.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for cut in ("site-packages/", "/lib/python3.11/", "/operator/"):
        if cut in where:
            where = where.split(cut, 1)[1]
            break
    return f"{name} ({where})"


def summary(path: Path, top: int = 15) -> str:
    stacks = _stacks(path)
    total = sum(stacks.values())
    if not total:
        return f"profile {path}: no samples"
    areas: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    graphcred_inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        areas[_area(frames)] += count
        self_time[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames if "graphcred/" in f}:
            graphcred_inclusive[frame] += count
    wall_file = path.with_suffix(".wall")
    wall = float(wall_file.read_text()) if wall_file.exists() else 0.0
    busy = f", the GIL held {100 * total / RATE / wall:.0f}% of {wall:.0f} s" if wall else ""
    lines = [f"profile {path}: {total} samples at {RATE}/s ({total / RATE:.1f} s holding the GIL{busy})",
             "by area (the innermost frame that belongs to one):"]
    lines += [f"  {100 * c / total:5.1f}%  {area}" for area, c in areas.most_common()]
    lines.append(f"top {top} functions by own time:")
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in self_time.most_common(top)]
    lines.append(f"top {top} graphcred functions by inclusive time:")
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in graphcred_inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
