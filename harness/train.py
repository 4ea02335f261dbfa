"""The training loop: one run from a RunConfig to a finished run folder.

:class:`harness.trainer.Trainer` owns a model, its optimiser and the random
streams of a run, and advances training by one step. :func:`train_run` drives a Trainer with
periodic validation on a fixed validation set, early stopping on validation
Recall@20, restoration of the best weights, a single final test evaluation
and the run files (see :mod:`harness.runs`).

Randomness: every stream is seeded from ``RunConfig.seed``. The backbone's
parameter initialisation uses the seed itself (inside ``build_backbone``).
Five further streams come from ``numpy.random.SeedSequence(seed).spawn(5)``,
in this order: batch sampling, strategy draws, negative sampling, the
validation subsample and torch's global generators. The registered backbones
draw from generators of their own, but a user-added backbone may use the
global ones (``nn.Dropout`` does), so they are seeded too, inside
``torch.random.fork_rng``: a run leaves the caller's RNG state as it found
it. A new stream must be appended at the end, so that the streams of
existing runs keep their seeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from backbones import build_backbone
from harness import runs
from harness.balance import interest_recovery, interest_top_items, selection_entropy
from harness.config import RunConfig
from harness.data.load import load_dataset
from harness.data.sampler import pad_histories
from harness.data.split import make_split
from harness.data.stats import dataset_stats
from harness.data.types import EvalSet, Sequences, Split
from harness.errors import DataError, HarnessError
from harness.evaluate import EvalResult, evaluate
from harness.trainer import NonFiniteError, RunSeeds, Trainer, TrainWindow, resolve_device
from strategies import build_strategy

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

EVAL_KS = (10, 20, 50)
EARLY_STOP_METRIC = "recall@20"

# How often (in steps) the accumulated loss is read back to check that it is
# finite. Reading it forces a device sync, so it is not done every step.
FINITE_CHECK_EVERY = 50


@dataclass(frozen=True)
class RunSummary:
    """Result of a finished run, with the same numbers as its ``metrics.json``.

    Attributes:
        run_id: Deterministic id of the run config.
        run_dir: Folder holding the run files.
        method: ``backbone+strategy``.
        dataset: Data set name.
        best_step: Step of the restored (best validation) weights.
        steps: Steps trained.
        stopped: ``"early"``, ``"max_steps"`` or ``"nan"``.
        valid: Validation metric means at ``best_step``.
        test: Test metric means of the restored weights (None when the test
            split was not evaluated).
        balance: Test interest-balance summary plus the mean training selection entropy.
        train_seconds: Wall time spent in training steps.
        eval_seconds: Wall time spent in validation and test evaluation.
    """

    run_id: str
    run_dir: Path
    method: str
    dataset: str
    best_step: int
    steps: int
    stopped: str
    valid: dict[str, float]
    test: dict[str, float] | None
    balance: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


@contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block and restore the caller's state afterwards.

    Only the CPU generator and the generator of ``device`` (when it is a CUDA
    device) are forked and seeded; other GPUs are left alone.
    """
    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda_devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(cuda_devices[0]):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (None: leave it) and restore it afterwards."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def validation_set(split: Split, valid_users: int | None, seed: int) -> EvalSet:
    """Return the fixed validation set: every validation user, or a subsample drawn once.

    The subsample is drawn without replacement from ``numpy.random.default_rng(seed)``
    and kept in user order, so every validation of a run, and every run with
    the same seed, scores the same users.
    """
    valid = split.valid
    if valid_users is None or valid_users >= len(valid):
        return valid
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(valid), size=valid_users, replace=False))
    return valid.subset(rows)


def _check_trainable(split: Split, dataset_name: str) -> None:
    """Raise a DataError when the split leaves nothing to train or validate on."""
    trainable = int((split.train.lengths >= 2).sum())
    if trainable == 0:
        minimum = (
            "4 items (leave-one-out keeps the last two for validation and test)"
            if split.protocol == "loo"
            else "2 items"
        )
        raise DataError(
            f"no user of data set {dataset_name!r} has enough items to train on: a training user needs at least "
            f"{minimum}; use a data set with longer sequences or a lower --k-core"
        )
    if len(split.valid) == 0:
        raise DataError(
            f"data set {dataset_name!r} has no validation users after the {split.protocol!r} split; use more users"
        )


def _evaluate(
    model: nn.Module, eval_set: EvalSet, n_items: int, config: RunConfig, device: torch.device
) -> EvalResult:
    model.eval()
    with torch.no_grad():
        return evaluate(
            model,
            eval_set,
            n_items,
            max_len=config.model.max_len,
            ks=EVAL_KS,
            exclude_history=config.train.exclude_history,
            batch_size=config.train.eval_batch_size,
            device=str(device),
        )


def _curve_row(
    step: int, window: TrainWindow, valid: Mapping[str, float], elapsed: float
) -> dict[str, float]:
    row: dict[str, float] = {
        "step": step,
        "loss": window.loss,
        "valid_recall@20": valid.get("recall@20", math.nan),
        "valid_ndcg@20": valid.get("ndcg@20", math.nan),
        "selection_entropy": selection_entropy(window.selection_counts),
    }
    for index, frequency in enumerate(window.selection_frequencies):
        row[f"sel_{index}"] = float(frequency)
    row["elapsed_s"] = round(elapsed, 3)
    for name, value in valid.items():
        row.setdefault(f"valid_{name}", value)
    return row


@dataclass
class _Best:
    """Best validation so far and a copy of the weights that produced it."""

    step: int
    score: float
    state: dict[str, torch.Tensor]
    valid: dict[str, float] = field(default_factory=dict)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def check_config(config: RunConfig) -> None:
    """Check the settings that fail only when a run starts: device, backbone and strategy options.

    Building the strategy and a one-item backbone validates every option
    without loading data, so a misspelt option fails in a second rather than
    after the data set has loaded.

    Raises:
        ConfigError: The device is unavailable, or a name or option is invalid.
    """
    resolve_device(config.train.device)
    build_strategy(
        config.strategy.name, config.strategy.options, total_steps=config.train.max_steps
    )
    build_backbone(
        config.model.backbone,
        n_items=1,
        dim=config.model.dim,
        num_interests=config.model.num_interests,
        max_len=config.model.max_len,
        options=config.model.options,
        seed=config.seed,
    )


def train_run(
    config: RunConfig,
    run_dir: Path,
    *,
    dataset: Sequences | None = None,
    split: Split | None = None,
    progress: bool = True,
    trial: optuna.Trial | None = None,
    evaluate_test: bool = True,
) -> RunSummary:
    """Train one run, validate and stop early, evaluate the best weights on test, write the run folder.

    Args:
        config: The run config; ``config.run_id`` names the run.
        run_dir: The run folder; created if missing. ``metrics.json`` and
            ``error.json`` of an earlier attempt are removed first, and
            ``log.txt`` is appended to.
        dataset: The prepared data set (loaded from ``config.data`` when None).
            Needed for the original user ids in ``per_user.parquet``.
        split: The split (made from ``dataset`` with ``config.data.split`` and
            ``config.data.split_seed`` when None).
        progress: Show a tqdm progress bar on stderr with the loss and the last
            validation Recall@20.
        trial: An Optuna trial. Validation Recall@20 is reported to it after
            each validation. When the trial's pruner decides to stop, the run
            raises ``optuna.TrialPruned`` and writes no ``metrics.json``.
        evaluate_test: Evaluate the best weights on the test split. When False
            (tuning), ``split.test`` is never read, ``metrics.json`` has
            ``"test": null`` and no ``per_user.parquet`` is written.

    Returns:
        The run summary, also written to ``metrics.json``.

    Raises:
        HarnessError: A user-fixable problem (bad data, options, or a run that
            diverged before its first validation). ``error.json`` is written
            for it and for any other exception except a pruned trial.
    """
    # Reject a bad config before the run folder changes, so that a failed re-run
    # of a finished run never removes its results.
    check_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.clear_outcome(run_dir)
    pruned: tuple[type[BaseException], ...] = ()
    if trial is not None:
        import optuna

        pruned = (optuna.TrialPruned,)

    with runs.run_log(run_dir):
        try:
            with _torch_threads(config.train.threads):
                return _train_run(config, run_dir, dataset, split, progress, trial, evaluate_test)
        except pruned:
            raise
        except Exception as exc:
            logger.error("run %s failed: %s", config.run_id, exc)
            runs.write_error(run_dir, config.run_id, exc)
            raise


def _train_run(
    config: RunConfig,
    run_dir: Path,
    dataset: Sequences | None,
    split: Split | None,
    progress: bool,
    trial: optuna.Trial | None,
    evaluate_test: bool,
) -> RunSummary:
    device = resolve_device(config.train.device)
    seeds = RunSeeds.from_seed(config.seed)

    # config.json comes first, so that a run that fails while loading data can still be traced.
    runs.write_config(
        run_dir,
        config,
        dataset=dataset.name if dataset is not None else config.data.name,
        extra={"device": str(device), "threads": torch.get_num_threads()},
    )

    # Data: load and split unless the caller shares them between runs.
    if dataset is None:
        dataset = load_dataset(config.data)
    if split is None:
        split = make_split(dataset, protocol=config.data.split, seed=config.data.split_seed)
    _check_trainable(split, dataset.name)
    logger.info(
        "run %s: %s on %s (%d users, %d items), seed %d, device %s",
        config.run_id,
        config.method,
        dataset.name,
        dataset.n_users,
        split.n_items,
        config.seed,
        device,
    )

    valid_set = validation_set(split, config.train.valid_users, seeds.validation)
    with _seeded_global_rng(seeds.torch_global, device):
        trainer = Trainer(config, split, device=device, seeds=seeds)
        outcome = _FitLoop(trainer, valid_set, config, run_dir, trial).run(progress)

        # Test once, with the restored best weights; nothing is chosen from it.
        trainer.model.load_state_dict(outcome.best.state)
        test_result: EvalResult | None = None
        eval_seconds = outcome.eval_seconds
        if evaluate_test:
            started = time.perf_counter()
            test_result = _evaluate(trainer.model, split.test, split.n_items, config, device)
            eval_seconds += time.perf_counter() - started

    balance: dict[str, float] = {"selection_entropy": outcome.mean_selection_entropy}
    if test_result is not None:
        balance = {**{k: float(v) for k, v in test_result.balance.items()}, **balance}
        balance.update(_write_per_user(run_dir, test_result, trainer.model, dataset, split, config))

    summary = RunSummary(
        run_id=config.run_id,
        run_dir=run_dir,
        method=config.method,
        dataset=dataset.name,
        best_step=outcome.best.step,
        steps=outcome.steps,
        stopped=outcome.stopped,
        valid=outcome.best.valid,
        test={k: float(v) for k, v in test_result.summary.items()}
        if test_result is not None
        else None,
        balance=balance,
        train_seconds=outcome.train_seconds,
        eval_seconds=eval_seconds,
    )
    runs.write_metrics(
        run_dir,
        _metrics_payload(
            summary, config, trainer.num_interests, test_result, dataset_stats(dataset)
        ),
    )
    logger.info(
        "run %s finished: best step %d of %d (%s), valid recall@20 %.4f%s",
        config.run_id,
        summary.best_step,
        summary.steps,
        summary.stopped,
        summary.valid.get("recall@20", math.nan),
        f", test recall@20 {summary.test['recall@20']:.4f}" if summary.test else "",
    )
    return summary


def _write_per_user(
    run_dir: Path,
    test_result: EvalResult,
    model: nn.Module,
    dataset: Sequences,
    split: Split,
    config: RunConfig,
) -> dict[str, float]:
    """Write ``per_user.parquet`` for the test users; return interest recovery on synthetic data."""
    per_user = test_result.per_user.copy()
    user_ids = np.asarray(dataset.user_ids)[per_user["user"].to_numpy()].astype(str)
    per_user.insert(1, "user_id", user_ids)
    extra: dict[str, float] = {}
    if dataset.truth is not None:
        # Synthetic data records each user's planted topics, so the interests can be checked against them.
        recovery = interest_recovery_per_user(
            model, split.test, dataset.truth, max_len=config.model.max_len
        )
        row_of_user = pd.Series(np.arange(len(split.test)), index=split.test.users)
        per_user["interest_recovery"] = recovery[row_of_user[per_user["user"]].to_numpy()]
        extra["interest_recovery"] = float(np.nanmean(recovery))
    runs.write_parquet(run_dir / runs.PER_USER_FILE, per_user)
    return extra


@dataclass(frozen=True)
class _FitOutcome:
    best: _Best
    steps: int
    stopped: str
    train_seconds: float
    eval_seconds: float
    mean_selection_entropy: float


class _FitLoop:
    """Training with periodic validation, early stopping and divergence handling for one run."""

    def __init__(
        self,
        trainer: Trainer,
        valid_set: EvalSet,
        config: RunConfig,
        run_dir: Path,
        trial: optuna.Trial | None,
    ) -> None:
        self.trainer = trainer
        self.valid_set = valid_set
        self.config = config
        self.run_dir = run_dir
        self.trial = trial
        self.best = _Best(step=0, score=-math.inf, state=_copy_state(trainer.model))
        self.curve: list[dict[str, float]] = []
        self.bad_validations = 0
        self.eval_seconds = 0.0
        self.started = time.perf_counter()

    def run(self, progress: bool) -> _FitOutcome:
        """Train until max_steps, early stopping or divergence; return the best weights."""
        train = self.config.train
        check_every = min(FINITE_CHECK_EVERY, train.eval_every)
        stopped = "max_steps"
        train_seconds = 0.0
        last_check = 0
        bar = tqdm(
            total=train.max_steps,
            disable=not progress,
            file=sys.stderr,
            desc=self.config.method,
            leave=False,
            dynamic_ncols=True,
        )
        # Console log lines go through tqdm.write while the bar is shown, so they do not break it.
        redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
        with bar, redirect:
            step = 0
            segment_start = time.perf_counter()
            while step < train.max_steps:
                step += 1
                try:
                    self.trainer.step()
                    failed = False
                except NonFiniteError as exc:
                    logger.error("%s", exc)
                    failed = True
                bar.update(1)
                validate = step % train.eval_every == 0 or step == train.max_steps
                if not (validate or failed or step % check_every == 0):
                    continue

                # A non-finite loss has already corrupted the weights through Adam, so fall back on the best copy.
                # A finite loss can still be followed by an update that overflowed the weights.
                if (
                    failed
                    or not self.trainer.loss_is_finite()
                    or (validate and not self.trainer.parameters_finite())
                ):
                    train_seconds += time.perf_counter() - segment_start
                    stopped = "nan"
                    self._report_divergence(step if failed else last_check + 1, step)
                    break
                last_check = step
                if not validate:
                    bar.set_postfix(loss=f"{self.trainer.mean_loss():.4f}", refresh=False)
                    continue

                train_seconds += time.perf_counter() - segment_start
                score = self._validate(step)
                bar.set_postfix(
                    loss=f"{self.curve[-1]['loss']:.4f}", valid=f"{score:.4f}", refresh=False
                )
                self._report_to_trial(score, step)
                if self.bad_validations >= train.patience:
                    stopped = "early"
                    logger.info(
                        "early stop at step %d: no improvement in %d validations",
                        step,
                        self.bad_validations,
                    )
                    break
                segment_start = time.perf_counter()

        entropies = [row["selection_entropy"] for row in self.curve]
        return _FitOutcome(
            best=self.best,
            steps=step,
            stopped=stopped,
            train_seconds=train_seconds,
            eval_seconds=self.eval_seconds,
            mean_selection_entropy=float(np.mean(entropies)) if entropies else math.nan,
        )

    def _validate(self, step: int) -> float:
        """Evaluate on the validation set, log and store the curve row, keep the best weights."""
        window = self.trainer.take_window()
        eval_started = time.perf_counter()
        result = _evaluate(
            self.trainer.model,
            self.valid_set,
            self.trainer.n_items,
            self.config,
            self.trainer.device,
        )
        self.eval_seconds += time.perf_counter() - eval_started
        valid = {k: float(v) for k, v in result.summary.items()}
        score = valid[EARLY_STOP_METRIC]

        row = _curve_row(step, window, valid, time.perf_counter() - self.started)
        self.curve.append(row)
        runs.write_csv(self.run_dir / runs.CURVE_FILE, pd.DataFrame(self.curve))

        improved = score > self.best.score
        if improved:
            self.best = _Best(
                step=step, score=score, state=_copy_state(self.trainer.model), valid=valid
            )
            self.bad_validations = 0
        else:
            self.bad_validations += 1
        logger.info(
            "step %d: loss %.4f, valid recall@20 %.4f, ndcg@20 %.4f%s; selection %s (entropy %.3f)",
            step,
            window.loss,
            score,
            valid.get("ndcg@20", math.nan),
            " (best)" if improved else f" (best {self.best.score:.4f} at step {self.best.step})",
            np.array2string(window.selection_frequencies, precision=3, separator=", "),
            row["selection_entropy"],
        )
        return score

    def _report_to_trial(self, score: float, step: int) -> None:
        """Report the validation score to the Optuna trial and raise TrialPruned when its pruner stops it."""
        if self.trial is None:
            return
        self.trial.report(score, step)
        if self.trial.should_prune():
            import optuna

            logger.info(
                "trial %d pruned at step %d (valid recall@20 %.4f)", self.trial.number, step, score
            )
            raise optuna.TrialPruned(f"pruned at step {step}")

    def _report_divergence(self, first: int, last: int) -> None:
        """Log a divergence between steps ``first`` and ``last``, or raise when no validated weights exist."""
        steps = f"at step {last}" if first == last else f"between steps {first} and {last}"
        if self.best.step == 0:
            raise HarnessError(
                f"training diverged: the loss or the scores became NaN or infinite {steps}, before the "
                "first validation, so no usable weights exist; lower --lr or set --clip-grad-norm"
            )
        logger.error(
            "training diverged: the loss or the scores became NaN or infinite %s; stopping and restoring "
            "the weights of step %d (valid recall@20 %.4f). Lower --lr or set --clip-grad-norm to avoid this.",
            steps,
            self.best.step,
            self.best.score,
        )


def interest_recovery_per_user(
    model: nn.Module,
    eval_set: EvalSet,
    truth: Any,
    *,
    max_len: int,
    batch_size: int = 512,
    top_k: int = 20,
) -> np.ndarray:
    """Return, per user of ``eval_set``, the fraction of planted topics that some interest recovers.

    Each interest's top-``top_k`` items (over all items, history included)
    vote for a topic, as defined by :func:`harness.balance.interest_recovery`.

    Args:
        model: A trained backbone (evaluated in eval mode, without gradients).
        eval_set: The users to score, with their histories.
        truth: The synthetic generator's ground truth (``Sequences.truth``), with
            ``item_topic`` and ``user_topics``.
        max_len: History length fed to the model.
        batch_size: Users per forward pass.
        top_k: Items per interest list.

    Returns:
        ``(n,)`` float64 in ``[0, 1]``, NaN for a user without a planted topic.
    """
    device = next(model.parameters()).device
    item_embedding = model.item_embedding.weight  # (N + 1, D)
    lists = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(eval_set), batch_size):
            rows = np.arange(start, min(start + batch_size, len(eval_set)))
            history, mask = pad_histories(eval_set.history, max_len, rows)  # (b, L)
            interests = model(
                torch.from_numpy(history).to(device), torch.from_numpy(mask).to(device)
            )  # (b, K, D)
            lists.append(interest_top_items(interests, item_embedding, k=top_k))  # (b, K, top_k)
    return interest_recovery(
        np.concatenate(lists), truth.item_topic, truth.user_topics[eval_set.users]
    )


def _metrics_payload(
    summary: RunSummary,
    config: RunConfig,
    num_interests: int,
    test_result: EvalResult | None,
    data_stats: dict[str, Any],
) -> dict[str, Any]:
    return {
        "run_id": summary.run_id,
        "status": runs.FINISHED,
        "method": summary.method,
        "dataset": summary.dataset,
        "backbone": config.model.backbone,
        "strategy": config.strategy.name,
        "seed": config.seed,
        "best_step": summary.best_step,
        "steps": summary.steps,
        "stopped": summary.stopped,
        "train_seconds": round(summary.train_seconds, 3),
        "eval_seconds": round(summary.eval_seconds, 3),
        "valid": summary.valid,
        "test": summary.test,
        "balance": summary.balance,
        "num_interests": num_interests,
        "n_test_users": len(test_result.per_user) if test_result is not None else 0,
        # Statistics of the prepared data set, for the report's data set table.
        "dataset_stats": data_stats,
    }


class _PopularityScorer(nn.Module):
    """A one-interest "backbone" whose score for an item is its training count.

    Used to rank by popularity with the same evaluation code as the models
    (history exclusion and metrics included).
    """

    def __init__(self, item_counts: np.ndarray) -> None:
        super().__init__()
        counts = torch.as_tensor(item_counts, dtype=torch.float32)[:, None]  # (N + 1, 1)
        self.item_embedding = nn.Embedding.from_pretrained(counts, freeze=True)
        self.num_interests = 1

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.ones(history.shape[0], 1, 1, device=history.device)  # (B, K=1, D=1)

    def auxiliary_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def attention(self) -> torch.Tensor | None:
        return None


def popularity_baseline(
    split: Split,
    eval_set: EvalSet | None = None,
    *,
    max_len: int = 50,
    exclude_history: bool = True,
    batch_size: int = 512,
) -> EvalResult:
    """Evaluate the most-popular ranking: items ordered by their count in ``split.train``.

    Args:
        split: Provides the training counts and, by default, the users.
        eval_set: The users to score (default ``split.valid``).
        max_len: History length passed to evaluation (only history exclusion uses it).
        exclude_history: Exclude each user's history items from the ranking.
        batch_size: Users per evaluation batch.

    Returns:
        The evaluation result, with the same metrics as a model's.
    """
    # Items with equal counts are ranked by increasing id, the tie rule of harness.metrics.
    counts = np.bincount(split.train.values, minlength=split.n_items + 1)
    scorer = _PopularityScorer(counts)
    return evaluate(
        scorer,
        split.valid if eval_set is None else eval_set,
        split.n_items,
        max_len=max_len,
        ks=EVAL_KS,
        exclude_history=exclude_history,
        batch_size=batch_size,
        device="cpu",
    )
