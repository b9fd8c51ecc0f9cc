"""`python -m graphcred_testbed demo [--hold]`: the whole story on a local bed, no Azure account, no cluster
(demo.py).

`python -m graphcred_testbed soak --minutes 20 --seed 1` (`make soak`): the fault soak (soak/) on a bed of its
own; prints the figures and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .demo import DEFAULT_LIFETIME, demo


def _lifetime(text: str) -> int:
    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, not {text!r}") from None
    if seconds < 20:  # the operator refreshes no sooner than 5 s after an issue: shorter would refresh in a loop
        raise argparse.ArgumentTypeError(f"at least 20 seconds, not {seconds}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphcred_testbed")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run graphcred on a local bed and show a token Secret")
    d.add_argument("--hold", action="store_true", help="keep the bed and operator up until Ctrl-C, printing "
                   "each refresh")
    d.add_argument("--token-lifetime", type=_lifetime, default=DEFAULT_LIFETIME, metavar="SECONDS",
                   help=f"lifetime of the issuer's tokens (default {DEFAULT_LIFETIME}; refreshed at half of it)")
    s = sub.add_parser("soak", help="the fault soak: many credentials, two replicas, seeded faults, invariants")
    s.add_argument("--minutes", type=float, default=20.0, help="length after setup (faults, then quiet)")
    s.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    s.add_argument("--credentials", type=int, default=200)
    s.add_argument("--apps", type=int, default=40)
    s.add_argument("--quiet", type=float, default=90.0, help="seconds without faults at the end")
    s.add_argument("--log-level", default="INFO", help="the replicas' log level")
    s.add_argument("--hostile", action="store_true",
                   help="add a hostile namespace that keeps trying known attacks on a shared operator (docs/soak.md)")
    s.add_argument("--hostile-attacks", metavar="KIND,...",
                   help="with --hostile: only these attacks (default: all; see docs/soak.md for the kinds)")
    s.add_argument("--logdir", type=Path, help="where logs and the plan go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.command == "soak":
        return soak(args)
    return demo(args.hold, args.token_lifetime)


def soak(args: argparse.Namespace) -> int:
    from .hostile import ATTACKS
    from .soak import SoakConfig, own_bed, run_soak

    chosen = args.hostile_attacks
    attacks = tuple(a.strip() for a in chosen.split(",") if a.strip()) if chosen else ATTACKS
    cfg = SoakConfig(minutes=args.minutes, seed=args.seed, credentials=args.credentials, apps=args.apps,
                     quiet_seconds=args.quiet, log_level=args.log_level, hostile=args.hostile, hostile_attacks=attacks)
    unknown = set(cfg.hostile_attacks) - set(ATTACKS)
    if unknown or not cfg.hostile_attacks:
        print(f"--hostile-attacks: unknown {', '.join(sorted(unknown)) or '(none given)'}; choose from "
              + ", ".join(ATTACKS), file=sys.stderr)
        return 2
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="graphcred-soak-"))
    print(f"graphcred soak: {cfg.minutes:g} min, seed {cfg.seed}, {cfg.credentials} credentials"
          f"{', a hostile tenant' if cfg.hostile else ''}; logs in {logdir}", flush=True)
    with own_bed() as bed:
        result = run_soak(bed, cfg, logdir)
    print(result.report())
    return 1 if result.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
