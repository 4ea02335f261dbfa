"""Hand-made study folders for the report tests: well-formed run files with chosen values.

``write_study`` writes ``study.json`` and ``runs/<run_id>/`` with
``config.json``, ``metrics.json``, ``per_user.parquet`` and ``curve.csv``
following the run-folder schema. Per-user metric values are
``scale[metric] * (base[user] + effect[method] + noise)``, so a test can tell
which method is best and which differences are significant:

* ``comirec-sa+bam`` is 0.10 above ``comirec-sa+argmax`` for every user
  (plus small noise): best everywhere and significantly better;
* ``comirec-sa+uniform`` is 0.05 below the reference: significantly worse;
* ``mind+bam`` is ``mind+argmax`` of the same seed plus 0.002 and an
  alternating +/-0.03 per user: the second best, but not significantly
  better than its reference (t = 0.42 on 40 users);
* ``mind+uniform`` is 0.01 below ``mind+argmax``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import DataConfig, ModelConfig, RunConfig, StrategyConfig

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
SCALE = {"recall@10": 0.8, "recall@20": 1.0, "ndcg@10": 0.5, "ndcg@20": 0.6}
EFFECT = {
    "comirec-sa+argmax": 0.00,
    "comirec-sa+bam": 0.10,
    "comirec-sa+uniform": -0.05,
    "mind+argmax": 0.04,
    "mind+bam": 0.042,
    "mind+uniform": 0.03,
}
MIND_BAM_SHIFT = 0.002
MIND_BAM_SWING = 0.03
BALANCE = {
    "argmax": {
        "entropy_norm": 0.30,
        "effective_interests": 1.5,
        "max_share": 0.80,
        "unused_fraction": 0.60,
    },
    "bam": {
        "entropy_norm": 0.85,
        "effective_interests": 3.2,
        "max_share": 0.40,
        "unused_fraction": 0.05,
    },
    "uniform": {
        "entropy_norm": 0.95,
        "effective_interests": 3.8,
        "max_share": 0.30,
        "unused_fraction": 0.01,
    },
    "annealed": {
        "entropy_norm": 0.70,
        "effective_interests": 2.6,
        "max_share": 0.50,
        "unused_fraction": 0.20,
    },
}
N_USERS = 40
K = 4


def user_values(dataset: str, method: str, seed: int, n_users: int = N_USERS) -> np.ndarray:
    """Return the per-user base value of one run, before the metric scale: ``(n_users,)``."""
    users = np.arange(n_users)
    base = 0.2 + 0.06 * (users % 5)
    offset = 0.01 if dataset == "beta" else 0.0
    if method == "mind+bam":
        swing = MIND_BAM_SWING * np.where(users % 2 == 0, 1.0, -1.0)
        return user_values(dataset, "mind+argmax", seed, n_users) + MIND_BAM_SHIFT + swing
    key = int(hashlib.sha256(f"{dataset}|{method}|{seed}".encode()).hexdigest()[:8], 16)
    noise = np.random.default_rng(key).normal(0.0, 0.01, n_users)
    return base + offset + EFFECT.get(method, 0.0) + noise


def _shares(strategy: str, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``(n_users, K)`` top-K shares: peaked for argmax, flatter for the others."""
    concentration = {"argmax": 0.2, "bam": 3.0, "uniform": 8.0}.get(strategy, 1.0)
    shares = rng.dirichlet(np.full(K, concentration), size=n_users)
    return np.round(shares * 20) / 20 if strategy != "argmax" else shares


def write_run(
    runs_dir: Path,
    *,
    dataset: str,
    backbone: str,
    strategy: str,
    seed: int,
    options: dict[str, Any] | None = None,
    values: np.ndarray | None = None,
    dataset_stats: bool = True,
    status: str = "finished",
) -> Path:
    """Write one finished run folder and return it.

    Args:
        runs_dir: The study's ``runs/`` folder.
        dataset, backbone, strategy, seed: The cell.
        options: Strategy options stored in config.json (ablation factors).
        values: Per-user base values; defaults to :func:`user_values`.
        dataset_stats: Whether metrics.json records ``dataset_stats``.
        status: The ``status`` written in metrics.json.
    """
    method = f"{backbone}+{strategy}"
    config = RunConfig(
        data=DataConfig(source=f"data/{dataset}.txt"),
        model=ModelConfig(backbone=backbone, num_interests=K),
        strategy=StrategyConfig(name=strategy, options=dict(options or {})),
        seed=seed,
    )
    run_id = config.run_id
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    if values is None:
        values = user_values(dataset, method, seed)
    n_users = values.size
    rng = np.random.default_rng(seed * 1000 + len(method))

    per_user = pd.DataFrame(
        {"user": np.arange(n_users), "user_id": [f"u{u:03d}" for u in range(n_users)]}
    )
    for metric in METRICS:
        per_user[metric] = SCALE[metric] * values
    shares = _shares(strategy, n_users, rng)
    for k in range(K):
        per_user[f"share_{k}"] = shares[:, k]
    per_user["redundancy"] = 0.2
    per_user.to_parquet(run_dir / "per_user.parquet", index=False)

    test = {metric: float(per_user[metric].mean()) for metric in METRICS}
    balance = dict(BALANCE.get(strategy, BALANCE["annealed"]))
    balance["selection_entropy"] = balance["entropy_norm"] * 0.9
    balance["redundancy"] = 0.2 + 0.01 * seed
    metrics: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "method": method,
        "dataset": dataset,
        "backbone": backbone,
        "strategy": strategy,
        "seed": seed,
        "best_step": 750,
        "steps": 1000,
        "stopped": "early",
        "train_seconds": 1.0,
        "eval_seconds": 0.1,
        "valid": test,
        "test": test,
        "balance": balance,
        "num_interests": K,
        "n_test_users": n_users,
    }
    if dataset_stats:
        metrics["dataset_stats"] = {
            "users": 1000,
            "items": 500,
            "interactions": 20000,
            "density": 0.04,
        }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "method": method,
                "dataset": dataset,
                "config": config.to_dict(),
                "versions": {"numpy": np.__version__},
                "git_commit": "0" * 40,
                "created": f"2025-01-01T00:00:{seed:02d}",
            }
        )
    )
    steps = np.arange(0, 1001, 250)
    final = test["recall@20"]
    pd.DataFrame(
        {
            "step": steps,
            "loss": 5.0 - steps / 500,
            "valid_recall@20": final * (1 - np.exp(-(steps + 100) / 300)),
            "valid_ndcg@20": 0.6 * final * (1 - np.exp(-(steps + 100) / 300)),
            "selection_entropy": balance["selection_entropy"] * np.ones(steps.size),
            **{f"sel_{k}": np.full(steps.size, 0.25) for k in range(K)},
            "elapsed_s": steps / 100,
        }
    ).to_csv(run_dir / "curve.csv", index=False)
    return run_dir


def write_failed_run(
    runs_dir: Path, *, dataset: str, backbone: str, strategy: str, seed: int
) -> Path:
    """Write a failed run folder: config.json and error.json, no metrics."""
    config = RunConfig(
        data=DataConfig(source=f"data/{dataset}.txt"),
        model=ModelConfig(backbone=backbone),
        strategy=StrategyConfig(name=strategy),
        seed=seed,
    )
    run_dir = runs_dir / config.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "run_id": config.run_id,
                "method": config.method,
                "dataset": dataset,
                "config": config.to_dict(),
            }
        )
    )
    (run_dir / "error.json").write_text(
        json.dumps(
            {"run_id": config.run_id, "error": "RuntimeError: loss is nan", "traceback": "..."}
        )
    )
    return run_dir


def write_study(
    root: Path,
    *,
    datasets: tuple[str, ...] = ("toy", "beta"),
    methods: tuple[str, ...] = tuple(EFFECT),
    seeds: tuple[int, ...] = (0, 1, 2),
    skip: frozenset[tuple[str, str, int]] = frozenset(),
    dataset_stats: bool = True,
    backbones: tuple[str, ...] | None = None,
    strategies: tuple[str, ...] | None = None,
) -> Path:
    """Write a grid study folder with every (data set, method, seed) run but those in ``skip``.

    ``backbones`` and ``strategies`` set the order study.json lists them in;
    by default each is the sorted set of those in ``methods``.
    """
    root.mkdir(parents=True, exist_ok=True)
    if backbones is None:
        backbones = tuple(sorted({m.split("+")[0] for m in methods}))
    if strategies is None:
        strategies = tuple(sorted({m.split("+")[1] for m in methods}))
    spec = {
        "name": root.name,
        "mode": "grid",
        "datasets": [f"data/{d}.txt" for d in datasets],
        "backbones": list(backbones),
        "strategies": list(strategies),
        "seeds": list(seeds),
    }
    (root / "study.json").write_text(json.dumps(spec))
    runs_dir = root / "runs"
    runs_dir.mkdir(exist_ok=True)
    for dataset in datasets:
        for method in methods:
            backbone, strategy = method.split("+")
            for seed in seeds:
                if (dataset, method, seed) in skip:
                    continue
                write_run(
                    runs_dir,
                    dataset=dataset,
                    backbone=backbone,
                    strategy=strategy,
                    seed=seed,
                    dataset_stats=dataset_stats,
                )
    return root


def tau_effect(tau: float) -> float:
    """Effect of the annealed strategy's tau in the ablation fixture: best at tau = 0.5."""
    return 0.08 - 0.2 * (tau - 0.5) ** 2


def write_ablation_study(
    root: Path,
    *,
    taus: tuple[float, ...] = (0.1, 0.5, 1.0),
    seeds: tuple[int, ...] = (0, 1, 2),
    strategy: str = "annealed",
    with_argmax: bool = True,
) -> Path:
    """Write a ``strategy.tau`` ablation: comirec-sa+``strategy`` at each tau.

    With ``with_argmax`` the study also has comirec-sa+argmax runs without a
    tau, as the reference. Without it the study has one backbone and one
    strategy, like the folders that `harness ablation` writes.
    """
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": root.name,
        "mode": "grid",
        "datasets": ["data/toy.txt"],
        "backbones": ["comirec-sa"],
        "strategies": ["argmax", strategy] if with_argmax else [strategy],
        "seeds": list(seeds),
        "ablation": {"factor": "strategy.tau", "values": list(taus)},
    }
    (root / "study.json").write_text(json.dumps(spec))
    runs_dir = root / "runs"
    for seed in seeds:
        if with_argmax:
            write_run(runs_dir, dataset="toy", backbone="comirec-sa", strategy="argmax", seed=seed)
        for tau in taus:
            values = user_values("toy", f"{strategy}{tau}", seed) + tau_effect(tau)
            write_run(
                runs_dir,
                dataset="toy",
                backbone="comirec-sa",
                strategy=strategy,
                seed=seed,
                options={"tau": tau},
                values=values,
            )
    return root
