"""Config dataclasses: validation, JSON round trip and the run id."""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import DataConfig, ModelConfig, RunConfig, StrategyConfig, TrainConfig
from harness.errors import ConfigError


def test_round_trip_keeps_config() -> None:
    config = RunConfig(
        data=DataConfig(source="x.txt", k_core=5, split="user", split_seed=3),
        model=ModelConfig(backbone="mind", num_interests=6, options={"routing_axis": "positions"}),
        strategy=StrategyConfig(name="annealed", options={"tau_end": 0.05}),
        train=TrainConfig(lr=5e-4, max_steps=100),
        seed=7,
    )
    again = RunConfig.from_dict(config.to_dict())
    assert again == config
    assert again.run_id == config.run_id


def test_run_id_ignores_device_and_threads() -> None:
    base = RunConfig()
    moved = dataclasses.replace(
        base, train=dataclasses.replace(base.train, device="cpu", threads=1, eval_batch_size=64)
    )
    assert moved.run_id == base.run_id


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"train": TrainConfig(lr=2e-3)},
        {"strategy": StrategyConfig(name="argmax")},
        {"model": ModelConfig(num_interests=2)},
        {"data": DataConfig(split="user")},
    ],
    ids=["seed", "lr", "strategy", "interests", "split"],
)
def test_run_id_changes_with_results(change: dict) -> None:
    assert dataclasses.replace(RunConfig(), **change).run_id != RunConfig().run_id


def test_run_id_is_twelve_hex_digits() -> None:
    run_id = RunConfig().run_id
    assert len(run_id) == 12
    int(run_id, 16)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(lr=0), r"invalid lr=0: must be > 0"),
        (lambda: TrainConfig(patience=0), r"invalid patience=0"),
        (lambda: TrainConfig(loss="hinge"), r"unknown loss 'hinge'; valid choices: full, sampled"),
        (lambda: TrainConfig(device="tpu"), r"valid choices: auto, cpu, cuda"),
        (lambda: ModelConfig(num_interests=0), r"K must be >= 1"),
        (lambda: DataConfig(split="random"), r"valid choices: loo, user"),
        (lambda: DataConfig(k_core=-1), r"invalid k_core=-1: must be >= 0"),
    ],
    ids=["lr", "patience", "loss", "device", "interests", "split", "k-core"],
)
def test_invalid_values_rejected(build, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_from_dict_rejects_missing_section() -> None:
    payload = RunConfig().to_dict()
    del payload["train"]
    with pytest.raises(ConfigError, match="invalid run config"):
        RunConfig.from_dict(payload)


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("synthetic", "synthetic"),
        ("../data/amazon-beauty/Beauty.txt", "Beauty"),
        ("../data/amazon-grocery/train.csv", "amazon-grocery-train"),
    ],
)
def test_dataset_name_from_source(source: str, name: str) -> None:
    assert DataConfig(source=source).name == name
