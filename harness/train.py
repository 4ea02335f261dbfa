"""The training loop: one run from a RunConfig to a finished run folder.

:class:`Trainer` owns a model, its optimiser and the random streams of a run,
and advances training by one step. :func:`train_run` drives a Trainer with
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
import warnings
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
from backbones.regularization import routing_regularization
from harness import runs
from harness.balance import interest_recovery, interest_top_items, selection_entropy
from harness.config import RunConfig
from harness.data.load import load_dataset
from harness.data.sampler import TrainSampler, pad_histories
from harness.data.split import make_split
from harness.data.stats import dataset_stats
from harness.data.types import EvalSet, Sequences, Split
from harness.errors import ConfigError, DataError, HarnessError
from harness.evaluate import EvalResult, evaluate
from harness.losses import NegativeSampler, full_softmax_loss, sampled_softmax_loss
from strategies import build_strategy
from strategies.base import Selection

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

EVAL_KS = (10, 20, 50)
EARLY_STOP_METRIC = "recall@20"

# How often (in steps) the accumulated loss is read back to check that it is
# finite. Reading it forces a device sync, so it is not done every step.
FINITE_CHECK_EVERY = 50


@dataclass(frozen=True)
class RunSeeds:
    """Independent seeds of the random streams of one run, derived from the run seed.

    Attributes:
        sampler: Training batch sampler (numpy Generator).
        strategy: Strategy draws (torch Generator on the training device).
        negatives: Shared negatives of the sampled softmax (torch Generator on the training device).
        validation: The fixed validation subsample (numpy Generator).
        torch_global: torch's global generators, seeded inside ``fork_rng``.
    """

    sampler: int
    strategy: int
    negatives: int
    validation: int
    torch_global: int

    @classmethod
    def from_seed(cls, seed: int) -> RunSeeds:
        """Spawn the five streams from ``numpy.random.SeedSequence(seed)`` in field order."""
        if seed < 0:
            raise ConfigError(f"invalid seed={seed}: must be >= 0")
        children = np.random.SeedSequence(seed).spawn(5)
        # Keep 63 bits, so that every seed is a non-negative int64, which both
        # torch.Generator.manual_seed and numpy.random.default_rng accept.
        values = [
            int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for child in children
        ]
        return cls(*values)


class NonFiniteError(RuntimeError):
    """A training step failed because the model produced NaN or infinite values (the run diverged)."""


@dataclass(frozen=True)
class TrainWindow:
    """Training statistics since the previous validation.

    Attributes:
        steps: Steps in the window.
        loss: Mean training loss over the window (NaN if it diverged).
        selection_counts: ``(K,)`` how often each interest was selected.
    """

    steps: int
    loss: float
    selection_counts: np.ndarray

    @property
    def selection_frequencies(self) -> np.ndarray:
        """``(K,)`` selection counts divided by their sum (zeros for an empty window)."""
        total = self.selection_counts.sum()
        return self.selection_counts / total if total > 0 else np.zeros(len(self.selection_counts))


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


def resolve_device(name: str) -> torch.device:
    """Return the torch device for a config's device name.

    ``auto`` becomes CUDA when a CUDA device is available, else the CPU.

    Raises:
        ConfigError: ``cuda`` was requested but no CUDA device is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "invalid device 'cuda': no CUDA device is available; use --device cpu or auto"
        )
    return torch.device(name)


@dataclass(frozen=True)
class _LossRows:
    """Embedding rows one training step's loss reads, with ids local to ``table``.

    Attributes:
        table: ``(R, D)`` rows of the item embedding table, row 0 padding; the
            whole table for the full softmax.
        target: ``(B,)`` row of each target in ``table``.
        negatives: ``(S,)`` rows of the shared negatives (sampled softmax only).
        negative_log_q: ``(S,)`` log Q of each negative, None without log-Q correction.
        target_log_q: ``(B,)`` log Q of each target, None without log-Q correction.
    """

    table: torch.Tensor
    target: torch.Tensor
    negatives: torch.Tensor | None = None
    negative_log_q: torch.Tensor | None = None
    target_log_q: torch.Tensor | None = None


class Trainer:
    """A model with its Adam optimiser, strategy, samplers and generators, trained one step per call.

    The loss and the per-interest selection counts accumulate on the device.
    Only :meth:`take_window`, :meth:`mean_loss`, :meth:`loss_is_finite` and
    :meth:`parameters_finite` read them back, so the trainer adds no
    device-to-host copy to a step.

    Args:
        config: The run config.
        split: Training rows come from ``split.train``; the negative sampler's
            popularity counts are the training counts, so validation and test
            targets never leak into it.
        device: Where the model trains.
        seeds: Seeds of the random streams (see :class:`RunSeeds`).
    """

    def __init__(
        self, config: RunConfig, split: Split, *, device: torch.device, seeds: RunSeeds
    ) -> None:
        train = config.train
        if train.clip_grad_norm is not None and not train.clip_grad_norm > 0:
            raise ConfigError(f"invalid clip_grad_norm={train.clip_grad_norm}: must be > 0")
        if train.loss == "full" and train.hard_negative_beta > 0:
            raise ConfigError(
                f"invalid hard_negative_beta={train.hard_negative_beta} with loss='full': "
                "hard negatives re-weight sampled negatives; use --loss sampled or --beta 0"
            )
        self.config = config
        self.device = device
        self.step_count = 0

        self.strategy = build_strategy(
            config.strategy.name, config.strategy.options, total_steps=train.max_steps
        )
        self.model = build_backbone(
            config.model.backbone,
            n_items=split.n_items,
            dim=config.model.dim,
            num_interests=config.model.num_interests,
            max_len=config.model.max_len,
            options=config.model.options,
            seed=config.seed,
        ).to(device)
        self.num_interests = int(self.model.num_interests)
        self.n_items = split.n_items

        self.sampler = TrainSampler(
            split.train, config.model.max_len, rng=np.random.default_rng(seeds.sampler)
        )
        self.strategy_generator = torch.Generator(device=device)
        self.strategy_generator.manual_seed(seeds.strategy)

        item_counts = np.bincount(split.train.values, minlength=split.n_items + 1)
        self.negative_sampler = NegativeSampler(item_counts, kind=train.negatives)
        self.negative_generator = torch.Generator(device=device)
        self.negative_generator.manual_seed(seeds.negatives)
        # log Q(i) of every item, to correct the target logit too. Training targets
        # always have a positive count here, so no entry that is read is -inf.
        with np.errstate(divide="ignore"):
            log_q = np.log(self.negative_sampler.probabilities)
        self.item_log_q = torch.as_tensor(log_q, dtype=torch.float32, device=device)  # (N + 1,)

        self.optimizer = _make_adam(self.model, lr=train.lr, weight_decay=train.weight_decay)
        self._loss_sum = torch.zeros((), device=device)
        self._selection_counts = torch.zeros(self.num_interests, dtype=torch.int64, device=device)
        self._window_steps = 0
        self._warned_no_attention = False

    def step(self) -> None:
        """Run one optimisation step on a freshly sampled batch.

        Raises:
            NonFiniteError: The strategy failed because the interest scores
                are NaN or infinite. A NaN loss does not raise, because
                :meth:`loss_is_finite` reports it.
        """
        history, mask, target = self.next_batch()
        loss, selection = self.compute_loss(history, mask, target)
        self.update(loss)

        self._loss_sum += loss.detach()
        # scatter_add_ rather than bincount, which reads the maximum back from a GPU.
        index = selection.index.detach()
        self._selection_counts.scatter_add_(0, index, torch.ones_like(index))
        self._window_steps += 1
        self.step_count += 1

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw the next training batch: ``history (B, W)``, ``mask (B, W)``, ``target (B,)`` on the device.

        The width ``W <= L`` is the longest history in the batch. Histories are
        right-aligned, so the leading ``L - W`` columns are padding in every row
        and are cut off. Every registered backbone masks padding and reads the
        position embedding from its last ``W`` rows, so the interests are the
        same as with the full width. The attention then runs over fewer
        positions: on Amazon Beauty the mean width of a batch of 128 is about
        33 of 50. MIND's routing logits and SASRec's dropout masks are drawn
        for ``W`` columns, so their draws depend on the width, which the seed
        fixes in turn.
        """
        batch = self.sampler.sample(self.config.train.batch_size)
        width = max(int(batch.mask.sum(axis=1).max()), 1)
        history = np.ascontiguousarray(batch.history[:, -width:])  # (B, W)
        mask = np.ascontiguousarray(batch.mask[:, -width:])  # (B, W)
        return (
            torch.from_numpy(history).to(self.device, non_blocking=True),
            torch.from_numpy(mask).to(self.device, non_blocking=True),
            torch.from_numpy(batch.target).to(self.device, non_blocking=True),
        )

    def compute_loss(
        self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, Selection]:
        """Run the forward pass and return the training loss and the strategy's selection.

        The loss is the recommendation loss of the selected vector, plus the
        backbone's auxiliary loss, plus ``routing_reg`` times the routing
        regularization when it is on.
        """
        self.model.train()
        interests = self.model(history, mask)  # (B, K, D)
        rows = self._loss_rows(target)
        target_embedding = rows.table[rows.target]  # (B, D)
        selection = self._select(interests, target_embedding)

        train = self.config.train
        if train.loss == "full":
            loss = full_softmax_loss(selection.vector, rows.target, rows.table)
        else:
            loss = sampled_softmax_loss(
                selection.vector,
                rows.target,
                rows.table,
                rows.negatives,
                rows.negative_log_q,
                rows.target_log_q,
                remove_accidental_hits=train.remove_accidental_hits,
                beta=train.hard_negative_beta,
            )
        loss = loss + self.model.auxiliary_loss()
        if train.routing_reg > 0:
            loss = loss + self._routing_penalty(mask)
        return loss, selection

    def _loss_rows(self, target: torch.Tensor) -> _LossRows:
        """Draw the step's shared negatives and gather the embedding rows the loss reads."""
        item_embedding = self.model.item_embedding.weight  # (N + 1, D)
        train = self.config.train
        if train.loss == "full":
            return _LossRows(table=item_embedding, target=target)

        negatives, negative_log_q = self.negative_sampler.sample(
            train.num_negatives, self.negative_generator
        )  # (S,)
        negative_log_q = negative_log_q if train.logq else None
        target_log_q = self.item_log_q[target] if train.logq else None
        if self.device.type != "cpu":
            return _LossRows(item_embedding, target, negatives, negative_log_q, target_log_q)

        # On the CPU every lookup into the (N + 1, D) table makes backward allocate, fill
        # and add one dense gradient of that size, which costs more than the lookup.
        # Gathering the B + S rows once into a compact table (row 0 stays padding, equal
        # ids share a row) leaves one such gradient and gives the same loss value.
        # torch.unique would force a device sync on a GPU, where dense gradients are cheap.
        ids, inverse = torch.unique(torch.cat([target, negatives]), return_inverse=True)
        table = item_embedding[torch.cat([ids.new_zeros(1), ids])]  # (R, D)
        local = inverse + 1
        return _LossRows(
            table=table,
            target=local[: len(target)],
            negatives=local[len(target) :],
            negative_log_q=negative_log_q,
            target_log_q=target_log_q,
        )

    def _select(self, interests: torch.Tensor, target_embedding: torch.Tensor) -> Selection:
        try:
            return self.strategy.select(
                interests, target_embedding, self.step_count, self.strategy_generator
            )
        except RuntimeError as exc:
            # Sampling strategies reject NaN or infinite probabilities (torch.multinomial raises).
            # The scores are checked only after a failure, so a normal step never syncs.
            with torch.no_grad():
                scores = torch.einsum("bkd,bd->bk", interests, target_embedding)  # (B, K)
            if bool(torch.isfinite(scores).all()):
                raise
            raise NonFiniteError(
                f"the {self.config.strategy.name!r} strategy failed at step {self.step_count + 1} "
                f"because the interest scores are NaN or infinite ({exc})"
            ) from exc

    def update(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, clip the gradient norm if configured, and take an Adam step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_grad_norm)
        self.optimizer.step()

    def _routing_penalty(self, mask: torch.Tensor) -> torch.Tensor:
        attention = self.model.attention()  # (B, K, L) or None
        if attention is None:
            if not self._warned_no_attention:
                warnings.warn(
                    f"routing_reg={self.config.train.routing_reg} has no effect: backbone "
                    f"{self.config.model.backbone!r} exposes no attention weights",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned_no_attention = True
            return torch.zeros((), device=self.device)
        return self.config.train.routing_reg * routing_regularization(attention, mask)

    def loss_is_finite(self) -> bool:
        """Tell whether every loss since the last :meth:`take_window` was finite.

        A single NaN or infinite loss makes the running sum non-finite, so one
        read covers the whole window.
        """
        return bool(torch.isfinite(self._loss_sum))

    def parameters_finite(self) -> bool:
        """Tell whether every model parameter is finite.

        It reads one flag per parameter back from the device, so the training
        loop calls it only before validations.
        """
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def mean_loss(self) -> float:
        """Return the mean loss of the current window without resetting it (NaN when empty)."""
        if self._window_steps == 0:
            return math.nan
        return float(self._loss_sum) / self._window_steps

    def take_window(self) -> TrainWindow:
        """Return the statistics since the last call and start a new window."""
        window = TrainWindow(
            steps=self._window_steps,
            loss=self.mean_loss(),
            selection_counts=self._selection_counts.cpu().numpy().copy(),
        )
        self._loss_sum.zero_()
        self._selection_counts.zero_()
        self._window_steps = 0
        return window


def _make_adam(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Build Adam with the fused kernel where torch has one for the device, else the foreach one.

    The fused kernel updates each parameter in one pass over its memory. For
    ComiRec-SA on Amazon Beauty (about 0.8M parameters, one CPU thread, torch
    2.13) a step takes about 0.33 ms fused against 1.4 ms with ``foreach``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


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
