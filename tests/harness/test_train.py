"""Tests of the training loop: run files, determinism, early stopping, test isolation, divergence."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import harness.train as train_module
import strategies
from backbones import REGISTRY as BACKBONES
from backbones import build_backbone
from backbones.regularization import routing_regularization
from harness import runs
from harness.config import ModelConfig, RunConfig, StrategyConfig, TrainConfig
from harness.data.sampler import TrainSampler
from harness.data.split import make_split
from harness.data.synthetic import SyntheticConfig, generate
from harness.data.types import EvalSet, Ragged, Sequences, Split
from harness.errors import ConfigError, DataError, HarnessError
from harness.evaluate import evaluate
from harness.losses import sampled_softmax_loss
from harness.train import popularity_baseline, train_run, validation_set
from harness.trainer import RunSeeds, Trainer, resolve_device
from strategies.argmax import ArgmaxStrategy
from strategies.base import Selection, StrategyOptions

torch.set_num_threads(1)

CPU = torch.device("cpu")
METRICS_KEYS = {
    "run_id",
    "status",
    "method",
    "dataset",
    "backbone",
    "strategy",
    "seed",
    "best_step",
    "steps",
    "stopped",
    "train_seconds",
    "eval_seconds",
    "valid",
    "test",
    "balance",
    "num_interests",
    "n_test_users",
    "dataset_stats",
}
TIMING_KEYS = ("train_seconds", "eval_seconds")
CURVE_PREFIX = [
    "step",
    "loss",
    "valid_recall@20",
    "valid_ndcg@20",
    "selection_entropy",
    "sel_0",
    "sel_1",
]


@pytest.fixture(scope="module")
def dataset() -> Sequences:
    return generate(
        0, SyntheticConfig(n_users=240, n_items=200, n_topics=10, min_len=10, max_len=30)
    )


@pytest.fixture(scope="module")
def split(dataset: Sequences) -> Split:
    return make_split(dataset, protocol="loo", seed=0)


def small_config(strategy: str = "bam", seed: int = 0, **train: Any) -> RunConfig:
    """A run small enough to train in well under a second."""
    options = {
        "max_steps": 40,
        "eval_every": 20,
        "batch_size": 32,
        "num_negatives": 64,
        "device": "cpu",
    }
    options.update(train)
    return RunConfig(
        model=ModelConfig(dim=16, num_interests=2, max_len=20),
        strategy=StrategyConfig(strategy),
        train=TrainConfig(**options),
        seed=seed,
    )


def read_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / runs.METRICS_FILE).read_text())


def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


class RecordingEvaluate:
    """Wraps harness.train.evaluate and records every evaluation set and parameter snapshot."""

    def __init__(self, scripted_recall: list[float] | None = None) -> None:
        self.calls: list[tuple[EvalSet, dict[str, torch.Tensor]]] = []
        self.scripted_recall = list(scripted_recall or [])

    def __call__(self, model: torch.nn.Module, eval_set: EvalSet, *args: Any, **kwargs: Any) -> Any:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.calls.append((eval_set, state))
        result = evaluate(model, eval_set, *args, **kwargs)
        if self.scripted_recall:
            # Replace the early-stopping metric to force a known best step.
            summary = dict(result.summary, **{"recall@20": self.scripted_recall.pop(0)})
            result = dataclasses.replace(result, summary=summary)
        return result


def test_run_writes_files_with_schema(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    config = small_config()

    summary = train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [runs.CONFIG_FILE, runs.METRICS_FILE, runs.PER_USER_FILE, runs.CURVE_FILE, runs.LOG_FILE]
    )
    metrics = read_metrics(tmp_path)
    assert set(metrics) == METRICS_KEYS
    assert metrics["run_id"] == config.run_id == summary.run_id
    assert metrics["status"] == "finished"
    assert metrics["method"] == "comirec-sa+bam"
    assert metrics["dataset"] == "synthetic"
    assert metrics["dataset_stats"]["users"] == dataset.n_users
    assert metrics["dataset_stats"]["interactions"] == dataset.n_interactions
    assert metrics["stopped"] == "max_steps"
    assert metrics["steps"] == 40
    assert metrics["best_step"] in (20, 40)
    assert metrics["num_interests"] == 2
    assert metrics["n_test_users"] == len(split.test)
    for part in ("valid", "test"):
        assert set(metrics[part]) == {
            f"{m}@{k}" for m in ("recall", "ndcg", "hit", "mrr") for k in (10, 20, 50)
        }
    assert {
        "entropy_norm",
        "effective_interests",
        "max_share",
        "unused_fraction",
        "redundancy",
    } <= set(metrics["balance"])
    assert 0.0 <= metrics["balance"]["selection_entropy"] <= 1.0
    assert 0.0 <= metrics["balance"]["interest_recovery"] <= 1.0

    stored_config = json.loads((tmp_path / runs.CONFIG_FILE).read_text())
    assert {"run_id", "method", "dataset", "config", "versions", "git_commit", "created"} <= set(
        stored_config
    )
    assert RunConfig.from_dict(stored_config["config"]) == config

    curve = pd.read_csv(tmp_path / runs.CURVE_FILE)
    assert list(curve.columns[: len(CURVE_PREFIX)]) == CURVE_PREFIX
    assert "elapsed_s" in curve.columns
    assert curve["step"].tolist() == [20, 40]
    np.testing.assert_allclose(curve[["sel_0", "sel_1"]].sum(axis=1), 1.0)
    best_row = curve.set_index("step").loc[metrics["best_step"]]
    assert best_row["valid_recall@20"] == pytest.approx(metrics["valid"]["recall@20"])
    assert metrics["valid"]["recall@20"] == curve["valid_recall@20"].max()
    assert metrics["balance"]["selection_entropy"] == pytest.approx(
        curve["selection_entropy"].mean()
    )

    per_user = pd.read_parquet(tmp_path / runs.PER_USER_FILE)
    assert list(per_user.columns[:2]) == ["user", "user_id"]
    assert {"share_0", "share_1", "redundancy", "recall@20", "ndcg@20", "interest_recovery"} <= set(
        per_user.columns
    )
    assert len(per_user) == len(split.test)
    assert per_user["user_id"].tolist() == [str(u) for u in dataset.user_ids[per_user["user"]]]
    # The summary is the mean of the per-user values, an independent route to the same number.
    assert metrics["test"]["recall@20"] == pytest.approx(per_user["recall@20"].mean())
    assert metrics["test"]["ndcg@20"] == pytest.approx(per_user["ndcg@20"].mean())
    assert metrics["balance"]["interest_recovery"] == pytest.approx(
        per_user["interest_recovery"].mean()
    )

    log = (tmp_path / runs.LOG_FILE).read_text()
    assert "step 20: loss" in log
    assert "finished: best step" in log
    assert "\x1b" not in log


def test_same_seed_same_results(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    config = small_config(valid_users=100)

    train_run(config, tmp_path / "a", dataset=dataset, split=split, progress=False)
    train_run(config, tmp_path / "b", dataset=dataset, split=split, progress=False)
    other = dataclasses.replace(config, seed=1)
    train_run(other, tmp_path / "c", dataset=dataset, split=split, progress=False)

    first, second, third = (read_metrics(tmp_path / name) for name in "abc")
    assert without_timing(first) == without_timing(second)
    assert first["test"] != third["test"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a" / runs.PER_USER_FILE),
        pd.read_parquet(tmp_path / "b" / runs.PER_USER_FILE),
    )
    curve_a, curve_b = (
        pd.read_csv(tmp_path / name / runs.CURVE_FILE).drop(columns="elapsed_s") for name in "ab"
    )
    pd.testing.assert_frame_equal(curve_a, curve_b)


def test_run_leaves_global_rng_alone(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    torch.manual_seed(123)
    np.random.seed(7)
    expected_torch = torch.rand(3)
    expected_numpy = np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(7)

    train_run(small_config(max_steps=20), tmp_path, dataset=dataset, split=split, progress=False)

    torch.testing.assert_close(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_numpy)


def test_early_stopping_restores_best(
    tmp_path: Path, dataset: Sequences, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation Recall@20 peaks at the second validation, so patience 2 stops at the fourth.
    recorder = RecordingEvaluate(scripted_recall=[0.1, 0.3, 0.2, 0.25])
    monkeypatch.setattr(train_module, "evaluate", recorder)
    config = small_config(max_steps=100, eval_every=10, patience=2)

    summary = train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    assert summary.stopped == "early"
    assert summary.best_step == 20
    assert summary.steps == 40
    assert summary.valid["recall@20"] == 0.3
    assert len(recorder.calls) == 5  # four validations, then the test
    test_set, test_state = recorder.calls[-1]
    assert test_set is split.test
    best_state = recorder.calls[1][1]
    last_state = recorder.calls[3][1]
    for name, tensor in test_state.items():
        torch.testing.assert_close(tensor, best_state[name], rtol=0, atol=0)
    assert any(not torch.equal(test_state[name], last_state[name]) for name in test_state)

    # Re-evaluating a fresh model loaded with the best weights gives the reported test metrics.
    model = build_backbone(
        "comirec-sa", n_items=split.n_items, dim=16, num_interests=2, max_len=20, seed=0
    )
    model.load_state_dict(best_state)
    again = evaluate(model, split.test, split.n_items, max_len=20)
    assert summary.test == pytest.approx(again.summary)
    assert read_metrics(tmp_path)["stopped"] == "early"


class ExplodingEvalSet:
    """Stands in for the test split and fails on any use."""

    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"the test split was read: .{name}")

    def __len__(self) -> int:
        raise AssertionError("the test split was read: len()")


def test_test_split_untouched(
    tmp_path: Path, dataset: Sequences, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    guarded = Split(split.train, split.valid, ExplodingEvalSet(), split.n_items, split.protocol)  # type: ignore[arg-type]
    recorder = RecordingEvaluate()
    monkeypatch.setattr(train_module, "evaluate", recorder)
    config = small_config(max_steps=30, eval_every=10, valid_users=50)

    summary = train_run(
        config, tmp_path, dataset=dataset, split=guarded, progress=False, evaluate_test=False
    )

    assert summary.test is None
    assert len(recorder.calls) == 3
    evaluated = [call[0] for call in recorder.calls]
    assert all(s is evaluated[0] for s in evaluated)  # the same fixed validation set every time
    assert len(evaluated[0]) == 50
    assert set(evaluated[0].users) <= set(split.valid.users)
    assert np.all(np.diff(evaluated[0].users) > 0)
    metrics = read_metrics(tmp_path)
    assert metrics["test"] is None
    assert metrics["n_test_users"] == 0
    assert not (tmp_path / runs.PER_USER_FILE).exists()


def test_validation_subsample_fixed(split: Split) -> None:
    first = validation_set(split, 60, seed=5)
    second = validation_set(split, 60, seed=5)
    other = validation_set(split, 60, seed=6)

    np.testing.assert_array_equal(first.users, second.users)
    assert not np.array_equal(first.users, other.users)
    assert len(set(first.users)) == 60
    # Histories and targets stay attached to their users.
    rows = np.searchsorted(split.valid.users, first.users)
    assert first.targets.to_lists() == [split.valid.targets[r].tolist() for r in rows]
    assert validation_set(split, None, seed=5) is split.valid
    assert validation_set(split, 10_000, seed=5) is split.valid


class NanAfterStrategy:
    """Argmax until a given step, then a NaN user vector (a strategy that breaks training)."""

    @dataclasses.dataclass(frozen=True)
    class Options(StrategyOptions):
        start: int = 25

    options_class: ClassVar[type[StrategyOptions]] = Options

    def __init__(self, options: Options) -> None:
        self.options = options
        self.inner = ArgmaxStrategy()

    def select(
        self, interests: torch.Tensor, target: torch.Tensor, step: int, generator: torch.Generator
    ) -> Selection:
        selection = self.inner.select(interests, target, step, generator)
        if step < self.options.start:
            return selection
        return dataclasses.replace(selection, vector=selection.vector * float("nan"))


def test_nan_strategy_keeps_best(
    tmp_path: Path, dataset: Sequences, split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(strategies.REGISTRY, "nan-after", NanAfterStrategy)
    recorder = RecordingEvaluate()
    monkeypatch.setattr(train_module, "evaluate", recorder)
    config = small_config(strategy="nan-after", max_steps=100, eval_every=10)

    summary = train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    assert summary.stopped == "nan"
    # Step 26 (index 25) is the first NaN loss, and the check after step 30 catches it.
    assert summary.steps == 30
    assert summary.best_step in (10, 20)
    assert all(math.isfinite(v) for v in summary.test.values())
    test_state = recorder.calls[-1][1]
    best_state = recorder.calls[summary.best_step // 10 - 1][1]
    for name, tensor in test_state.items():
        torch.testing.assert_close(tensor, best_state[name], rtol=0, atol=0)
    metrics = read_metrics(tmp_path)
    assert metrics["stopped"] == "nan"
    assert metrics["status"] == "finished"
    log = (tmp_path / runs.LOG_FILE).read_text()
    assert (
        "training diverged: the loss or the scores became NaN or infinite between steps 21 and 30"
        in log
    )
    assert f"restoring the weights of step {summary.best_step}" in log
    assert len(pd.read_csv(tmp_path / runs.CURVE_FILE)) == 2


def test_huge_lr_keeps_best(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    # lr=1e30 puts the weights near 1e30 after one Adam step, so the scores overflow at step 2.
    config = small_config(lr=1e30, eval_every=1, max_steps=50)

    summary = train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    assert summary.stopped == "nan"
    assert summary.best_step == 1
    assert summary.steps == 2
    assert all(math.isfinite(v) for v in summary.test.values())
    assert "restoring the weights of step 1" in (tmp_path / runs.LOG_FILE).read_text()


def test_divergence_before_validation_fails(
    tmp_path: Path, dataset: Sequences, split: Split
) -> None:
    config = small_config(lr=1e30, eval_every=20, max_steps=50)

    with pytest.raises(
        HarnessError, match="before the first validation, so no usable weights exist; lower --lr"
    ):
        train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    error = json.loads((tmp_path / runs.ERROR_FILE).read_text())
    assert error["run_id"] == config.run_id
    assert error["error"].startswith("HarnessError: training diverged")
    assert not (tmp_path / runs.METRICS_FILE).exists()


def test_retry_clears_stale_error(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    runs.write_json(tmp_path / runs.ERROR_FILE, {"run_id": "old", "error": "x", "traceback": ""})

    train_run(small_config(max_steps=20), tmp_path, dataset=dataset, split=split, progress=False)

    assert not (tmp_path / runs.ERROR_FILE).exists()
    assert runs.is_finished(tmp_path)


def test_optuna_trial_reports_and_prunes(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(upper=-1.0)
    )
    trial = study.ask()
    # An upper threshold below every value prunes at the first report.
    with pytest.raises(optuna.TrialPruned):
        train_run(
            small_config(), tmp_path, dataset=dataset, split=split, progress=False, trial=trial
        )

    curve = pd.read_csv(tmp_path / runs.CURVE_FILE)
    frozen = study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert frozen.intermediate_values == {20: pytest.approx(curve["valid_recall@20"].iloc[0])}
    assert not (tmp_path / runs.METRICS_FILE).exists()
    assert not (tmp_path / runs.ERROR_FILE).exists()

    kept_study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    kept = kept_study.ask()
    summary = train_run(
        small_config(), tmp_path / "kept", dataset=dataset, split=split, progress=False, trial=kept
    )
    finished = kept_study.tell(kept, summary.valid["recall@20"])
    kept_curve = pd.read_csv(tmp_path / "kept" / runs.CURVE_FILE)
    assert finished.intermediate_values == dict(
        zip(kept_curve["step"], kept_curve["valid_recall@20"], strict=True)
    )
    assert summary.stopped == "max_steps"


def test_too_short_data_fails(tmp_path: Path) -> None:
    rows = [[1, 2, 3], [2, 3, 4], [3, 4, 1]]
    short = Sequences(
        name="short",
        seqs=Ragged.from_lists(rows),
        user_ids=np.array(["a", "b", "c"]),
        item_ids=np.array(["<pad>", "i1", "i2", "i3", "i4"]),
    )
    # Leave-one-out keeps one training item per user, and a training example needs two.
    split_rows = Split(
        train=Ragged.from_lists([[1], [2], [3]]),
        valid=EvalSet(
            np.arange(3), Ragged.from_lists([[1], [2], [3]]), Ragged.from_lists([[2], [3], [4]])
        ),
        test=EvalSet(
            np.arange(3),
            Ragged.from_lists([[1, 2], [2, 3], [3, 4]]),
            Ragged.from_lists([[3], [4], [1]]),
        ),
        n_items=4,
        protocol="loo",
    )

    with pytest.raises(
        DataError,
        match="no user of data set 'short' has enough items to train on: a training user needs at least 4 items",
    ):
        train_run(small_config(), tmp_path, dataset=short, split=split_rows, progress=False)
    assert (tmp_path / runs.ERROR_FILE).exists()
    assert json.loads((tmp_path / runs.CONFIG_FILE).read_text())["dataset"] == "short"
    assert not (tmp_path / runs.METRICS_FILE).exists()


def trainers(config: RunConfig, split: Split, count: int = 2) -> list[Trainer]:
    return [
        Trainer(config, split, device=CPU, seeds=RunSeeds.from_seed(config.seed))
        for _ in range(count)
    ]


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_loss_matches_hand_computation(split: Split, kind: str) -> None:
    config = small_config(negatives=kind, strategy="argmax")
    trainer = trainers(config, split, count=1)[0]
    history, mask, target = trainer.next_batch()
    negative_state = trainer.negative_generator.get_state()

    loss, selection = trainer.compute_loss(history, mask, target)

    # Redraw the same negatives from a copy of the generator state.
    replay = torch.Generator()
    replay.set_state(negative_state)
    negatives, negative_log_q = trainer.negative_sampler.sample(64, replay)
    counts = np.bincount(split.train.values, minlength=split.n_items + 1).astype(np.float64)
    probabilities = (
        counts / counts.sum() if kind == "popularity" else np.full(len(counts), 1.0 / split.n_items)
    )
    target_log_q = torch.as_tensor(np.log(probabilities[target.numpy()]), dtype=torch.float32)
    with torch.no_grad():
        interests = trainer.model(history, mask)
        emb = trainer.model.item_embedding.weight
        scores = torch.einsum("bkd,bd->bk", interests, emb[target])
        user = interests[torch.arange(len(target)), scores.argmax(dim=1)]
        expected = sampled_softmax_loss(user, target, emb, negatives, negative_log_q, target_log_q)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(selection.vector.detach(), user)


def test_loss_without_logq(split: Split) -> None:
    trainer = trainers(
        small_config(logq=False, strategy="argmax", remove_accidental_hits=False), split, count=1
    )[0]
    history, mask, target = trainer.next_batch()
    state = trainer.negative_generator.get_state()

    loss, selection = trainer.compute_loss(history, mask, target)

    replay = torch.Generator()
    replay.set_state(state)
    negatives, _ = trainer.negative_sampler.sample(64, replay)
    emb = trainer.model.item_embedding.weight.detach()
    user = selection.vector.detach()
    logits = torch.cat([(user * emb[target]).sum(1, keepdim=True), user @ emb[negatives].T], dim=1)
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(len(target), dtype=torch.long))
    torch.testing.assert_close(loss.detach(), expected)


def test_routing_reg_adds_penalty(split: Split) -> None:
    plain, regularized = (
        trainers(small_config(strategy="argmax"), split, count=1)[0],
        trainers(small_config(strategy="argmax", routing_reg=0.5), split, count=1)[0],
    )
    history, mask, target = plain.next_batch()

    base, _ = plain.compute_loss(history, mask, target)
    with_penalty, _ = regularized.compute_loss(history, mask, target)

    penalty = routing_regularization(regularized.model.attention(), mask)
    assert penalty.item() > 0
    torch.testing.assert_close(with_penalty.detach(), (base + 0.5 * penalty).detach())


def test_routing_reg_warns_without_attention(split: Split) -> None:
    config = dataclasses.replace(
        small_config(routing_reg=0.5), model=ModelConfig(backbone="sasrec", dim=16, max_len=20)
    )
    trainer = trainers(config, split, count=1)[0]

    with pytest.warns(
        RuntimeWarning,
        match="routing_reg=0.5 has no effect: backbone 'sasrec' exposes no attention",
    ):
        trainer.step()


def test_batch_width_is_longest_history(split: Split) -> None:
    trainer = trainers(small_config(), split, count=1)[0]
    reference = TrainSampler(
        split.train, 20, rng=np.random.default_rng(RunSeeds.from_seed(0).sampler)
    )

    history, mask, target = trainer.next_batch()
    full = reference.sample(32)

    width = int(full.mask.sum(axis=1).max())
    assert history.shape == (32, width)
    np.testing.assert_array_equal(history.numpy(), full.history[:, -width:])
    np.testing.assert_array_equal(mask.numpy(), full.mask[:, -width:])
    np.testing.assert_array_equal(target.numpy(), full.target)
    assert not full.mask[:, :-width].any()


@pytest.mark.parametrize("name", sorted(BACKBONES), ids=sorted(BACKBONES))
def test_trimmed_batch_same_interests(split: Split, name: str) -> None:
    model = build_backbone(
        name, n_items=split.n_items, dim=16, num_interests=2, max_len=20, seed=0
    ).eval()
    sampler = TrainSampler(split.train, 20, rng=np.random.default_rng(3))
    batch = sampler.sample(16)
    batch.history[:, :3] = 0  # make sure at least three leading columns are padding
    batch.mask[:, :3] = False
    width = int(batch.mask.sum(axis=1).max())
    history, mask = torch.from_numpy(batch.history), torch.from_numpy(batch.mask)

    with torch.no_grad():
        full = model(history, mask)
        trimmed = model(history[:, -width:].contiguous(), mask[:, -width:].contiguous())

    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)


def test_run_seeds_independent() -> None:
    seeds = RunSeeds.from_seed(0)
    values = dataclasses.astuple(seeds)

    assert RunSeeds.from_seed(0) == seeds
    assert len(set(values)) == len(values)
    assert all(0 <= v < 2**63 for v in values)
    assert RunSeeds.from_seed(1) != seeds
    with pytest.raises(ConfigError, match="invalid seed=-1"):
        RunSeeds.from_seed(-1)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"loss": "full", "hard_negative_beta": 1.0}, "hard_negative_beta=1.0 with loss='full'"),
        ({"clip_grad_norm": 0.0}, "invalid clip_grad_norm=0.0"),
    ],
    ids=["beta-with-full", "zero-clip"],
)
def test_invalid_training_options(split: Split, train: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trainers(small_config(**train), split, count=1)


def test_full_softmax_and_clipping_train(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    config = small_config(loss="full", clip_grad_norm=1.0, max_steps=20, strategy="gumbel")

    summary = train_run(config, tmp_path, dataset=dataset, split=split, progress=False)

    assert summary.stopped == "max_steps"
    assert all(math.isfinite(v) for v in summary.test.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_unavailable() -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="no CUDA device is available; use --device cpu or auto"):
        resolve_device("cuda")


def test_popularity_baseline_by_hand() -> None:
    # Training counts: item 3 x3, item 1 x2, item 2 x1, items 4 and 5 unseen.
    split = Split(
        train=Ragged.from_lists([[3, 1, 3], [3, 1, 2], []]),
        valid=EvalSet(
            np.array([0, 1]),
            Ragged.from_lists([[3], [3, 1]]),
            Ragged.from_lists([[1], [4]]),
        ),
        test=EvalSet(np.array([2]), Ragged.from_lists([[5]]), Ragged.from_lists([[3]])),
        n_items=5,
        protocol="loo",
    )

    result = popularity_baseline(split)

    # User 0 (history 3): ranking 1, 2, ... so the target 1 is first.
    # User 1 (history 3, 1): ranking 2, then 4 and 5 tied at 0 in id order, so the target 4 is second.
    per_user = result.per_user.set_index("user")
    assert per_user.loc[0, "recall@10"] == 1.0
    assert per_user.loc[0, "ndcg@10"] == pytest.approx(1.0)
    assert per_user.loc[1, "recall@10"] == 1.0
    assert per_user.loc[1, "ndcg@10"] == pytest.approx(1 / math.log2(3))
    test_result = popularity_baseline(split, split.test)
    # User 2's history is item 5; item 3 is the most popular and ranks first.
    assert test_result.per_user.loc[0, "mrr@10"] == 1.0


BEAUTY = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "amazon-beauty" / "Beauty.txt"
)


@pytest.mark.slow
def test_beauty_beats_popularity(tmp_path: Path) -> None:
    # Takes several minutes on a 2-core CPU, so it runs only with `-m slow`.
    if not BEAUTY.exists():
        pytest.skip(f"data file not found: {BEAUTY}")
    config = RunConfig(data=dataclasses.replace(RunConfig().data, source=str(BEAUTY)))
    dataset = train_module.load_dataset(config.data)
    split = make_split(dataset, protocol="loo", seed=0)

    first = train_run(config, tmp_path / "a", dataset=dataset, split=split, progress=False)
    second = train_run(config, tmp_path / "b", dataset=dataset, split=split, progress=False)

    popularity = popularity_baseline(split).summary["recall@20"]
    assert first.valid["recall@20"] > 2 * popularity
    assert without_timing(read_metrics(tmp_path / "a")) == without_timing(
        read_metrics(tmp_path / "b")
    )
    assert second.test == first.test


def test_bad_rerun_keeps_finished_results(tmp_path: Path, dataset: Sequences, split: Split) -> None:
    config = small_config()
    train_run(config, tmp_path, dataset=dataset, split=split, progress=False)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    # Same folder, an invalid strategy option: rejected before anything is removed.
    bad = dataclasses.replace(config, strategy=StrategyConfig(name="gumbel", options={"tau": -1.0}))
    with pytest.raises(ConfigError, match="tau"):
        train_run(bad, tmp_path, dataset=dataset, split=split, progress=False)

    after = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert after == before
    assert runs.is_finished(tmp_path)
