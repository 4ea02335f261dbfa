"""Benchmark of the training and evaluation engine: steps/s, evaluated users/s and peak memory.

For each backbone, with the default RunConfig (B=128, L=50, D=64, K=4, 1,280
shared uniform negatives with log-Q, strategy BaM), the script measures:

- training steps/s over ``--steps`` steps after ``--warmup`` warm-up steps,
  with the time of each phase (batch sampling, forward and loss, backward and
  Adam step) from a second, phase-timed pass of ``--steps`` steps;
- evaluation users/s: full ranking over all items, history excluded, on every
  test user of the leave-one-out split;
- peak memory: the peak resident set size of the process (``ru_maxrss`` from
  ``resource.getrusage``), which counts everything the process holds: Python,
  torch, the data set, the model and the optimiser state.

Each backbone runs in its own child process, so that peak RSS belongs to that
backbone alone. Run from the repository root::

    .venv/bin/python bench/bench_engine.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "amazon-beauty" / "Beauty.txt"
BACKBONES = ("comirec-sa", "comirec-dr", "mind", "remi", "sasrec")


def _measure(args: argparse.Namespace) -> dict[str, float | int | str]:
    """Measure one backbone in this process and return the figures."""
    from harness.config import DataConfig, ModelConfig, RunConfig
    from harness.data.load import load_dataset
    from harness.data.split import make_split
    from harness.evaluate import evaluate
    from harness.trainer import RunSeeds, Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    config = RunConfig(
        data=DataConfig(source=str(args.data)), model=ModelConfig(backbone=args.worker)
    )
    dataset = load_dataset(config.data)
    split = make_split(dataset, protocol=config.data.split, seed=config.data.split_seed)
    trainer = Trainer(config, split, device=torch.device("cpu"), seeds=RunSeeds.from_seed(0))

    for _ in range(args.warmup):
        trainer.step()
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    loss = trainer.take_window().loss  # reads the accumulated loss, so all work is done
    train_seconds = time.perf_counter() - started

    # The same steps once more, with a clock between the phases.
    phases = {"sample": 0.0, "forward": 0.0, "backward": 0.0}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = trainer.next_batch()
        t1 = time.perf_counter()
        step_loss, _ = trainer.compute_loss(*batch)
        t2 = time.perf_counter()
        trainer.update(step_loss)
        t3 = time.perf_counter()
        trainer.step_count += 1
        phases["sample"] += t1 - t0
        phases["forward"] += t2 - t1
        phases["backward"] += t3 - t2

    trainer.model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        evaluate(
            trainer.model,
            split.test,
            split.n_items,
            max_len=config.model.max_len,
            exclude_history=True,
            batch_size=config.train.eval_batch_size,
            device="cpu",
        )
    eval_seconds = time.perf_counter() - started

    # ru_maxrss is in KiB on Linux.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "backbone": args.worker,
        "users": dataset.n_users,
        "items": split.n_items,
        "steps_per_s": args.steps / train_seconds,
        "ms_sample": 1000 * phases["sample"] / args.steps,
        "ms_forward_loss": 1000 * phases["forward"] / args.steps,
        "ms_backward_adam": 1000 * phases["backward"] / args.steps,
        "loss": loss,
        "test_users": len(split.test),
        "eval_users_per_s": len(split.test) / eval_seconds,
        "peak_rss_mib": peak_mib,
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _table(rows: list[dict[str, float | int | str]]) -> str:
    header = (
        f"{'backbone':<12} {'steps/s':>8} {'sample ms':>10} {'fwd+loss ms':>12} {'bwd+adam ms':>12} "
        f"{'eval users/s':>13} {'peak RSS MiB':>13}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['backbone']:<12} {row['steps_per_s']:>8.1f} {row['ms_sample']:>10.2f} "
            f"{row['ms_forward_loss']:>12.2f} {row['ms_backward_adam']:>12.2f} "
            f"{row['eval_users_per_s']:>13.0f} {row['peak_rss_mib']:>13.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    """Run every requested backbone in a child process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="One-line-per-user sequence file."
    )
    parser.add_argument(
        "--backbones", default=",".join(BACKBONES), help="Comma-separated backbone names."
    )
    parser.add_argument("--steps", type=int, default=200, help="Timed training steps.")
    parser.add_argument("--warmup", type=int, default=20, help="Untimed warm-up steps.")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default)."
    )
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(_measure(args)))
        return
    if not args.data.exists():
        sys.exit(f"error: data file not found: {args.data}; pass --data PATH")

    rows = []
    for name in [n.strip() for n in args.backbones.split(",") if n.strip()]:
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--data",
            str(args.data),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"{name}: failed\n{result.stderr.strip()}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['steps_per_s']:.1f} steps/s", file=sys.stderr)

    print(
        f"machine: {_cpu_model()}, nproc {len(os.sched_getaffinity(0))}, "
        f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}"
    )
    if rows:
        print(
            f"data: {args.data.name}, {rows[0]['users']} users, {rows[0]['items']} items; threads {rows[0]['threads']}"
        )
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
