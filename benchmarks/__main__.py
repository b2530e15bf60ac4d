"""Every table of the README's performance section, in one command, on the GPU when there is one.

    python -m benchmarks            # everything (2-core CPU: about 45 minutes)
    python -m benchmarks --quick    # fewer repeats and steps, to see that it runs

Each benchmark alone: ``python -m benchmarks.<name>`` (``--help`` for its options).
"""

from __future__ import annotations

import argparse
import warnings

from benchmarks import (
    default_overhead,
    feature_vis,
    peers,
    probe_cost,
    state_memory,
    step_overhead,
    trust_scores,
    validation_views,
)

BENCHMARKS = {
    "peers": (peers.main, ["--repeats", "2"]),
    "probe_cost": (probe_cost.main, ["--repeats", "2"]),
    "step_overhead": (step_overhead.main, ["--repeats", "1", "--steps", "53"]),
    "default_overhead": (default_overhead.main, ["--repeats", "1"]),
    "state_memory": (state_memory.main, []),
    "trust_scores": (trust_scores.main, ["--repeats", "1", "--models", "digits_cnn"]),
    "validation_views": (validation_views.main, ["--repeats", "1", "--epochs", "3"]),
    "feature_vis": (
        feature_vis.main,
        ["--epochs", "1", "--units", "2", "--lucent-steps", "64", "--repeats", "1"],
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in args.only:
        run, quick = BENCHMARKS[name]
        print(f"\n## {name}\n", flush=True)
        run(quick if args.quick else [])


if __name__ == "__main__":
    main()
