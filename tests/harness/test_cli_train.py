"""Tests of `harness train`: flags to config, end-to-end runs, and user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import harness.trainer as trainer_module
from harness import runs
from harness.cli import app
from harness.cli.options import TrainingFlags, parse_key_values
from harness.config import RunConfig
from harness.errors import ConfigError, DataError

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--max-steps",
    "10",
    "--eval-every",
    "5",
    "--dim",
    "8",
    "--num-negatives",
    "32",
    "--batch-size",
    "32",
    "--valid-users",
    "200",
    "--device",
    "cpu",
    "--no-progress",
]


def run_folder(output: Path) -> Path:
    folders = list((output / "train" / "runs").iterdir())
    assert len(folders) == 1
    return folders[0]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m harness` in a child process, as a user would from a shell."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HARNESS_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_train_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--dataset", "synthetic", *TINY, "--output", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    folder = run_folder(tmp_path)
    assert runs.is_finished(folder)
    metrics = json.loads((folder / runs.METRICS_FILE).read_text())
    config = RunConfig.from_dict(json.loads((folder / runs.CONFIG_FILE).read_text())["config"])
    assert folder.name == config.run_id
    assert config.model.dim == 8
    assert config.train.max_steps == 10
    assert config.train.valid_users == 200
    assert config.strategy.name == "bam"
    lines = result.stdout.splitlines()
    assert lines[0] == f"run {config.run_id}: comirec-sa+bam on synthetic"
    assert f"best step {metrics['best_step']} of 10 (stopped: max_steps)" in lines[1]
    valid, test = metrics["valid"], metrics["test"]
    assert f"valid recall@20 {valid['recall@20']:.4f}  ndcg@20 {valid['ndcg@20']:.4f}" in lines
    assert f"test  recall@20 {test['recall@20']:.4f}  ndcg@20 {test['ndcg@20']:.4f}" in lines
    assert lines[-1] == f"files: {folder}"


def test_strategy_option_reaches_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real_build = trainer_module.build_strategy

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(trainer_module, "build_strategy", spy)
    args = [
        "train",
        *TINY,
        "--strategy",
        "gumbel",
        "--strategy-option",
        "tau=0.5",
        "--strategy-option",
        "hard=false",
    ]

    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert len(built) == 1
    assert built[0].options.tau == 0.5
    assert built[0].options.hard is False
    stored = json.loads((run_folder(tmp_path) / runs.CONFIG_FILE).read_text())
    assert stored["config"]["strategy"] == {
        "name": "gumbel",
        "options": {"tau": 0.5, "hard": False},
    }


def test_flags_map_to_config() -> None:
    flags = TrainingFlags.from_params(
        {
            "dataset": "synthetic",
            "no_logq": True,
            "keep_accidental_hits": True,
            "keep_history": True,
            "beta": 0.5,
            "routing_reg": 2.0,
            "split": "user",
            "split_seed": 4,
            "output": Path("elsewhere"),
            "no_progress": True,
        }
    )

    config = flags.run_config(
        backbone="remi", strategy="annealed", seed=3, backbone_options={"x": 1}
    )

    assert config.train.logq is False
    assert config.train.remove_accidental_hits is False
    assert config.train.exclude_history is False
    assert config.train.hard_negative_beta == 0.5
    assert config.train.routing_reg == 2.0
    assert config.data.split == "user"
    assert config.data.split_seed == 4
    assert config.model.backbone == "remi"
    assert config.model.options == {"x": 1}
    assert config.strategy.name == "annealed"
    assert config.seed == 3


def test_flag_defaults_match_library() -> None:
    assert TrainingFlags().run_config(backbone="comirec-sa", strategy="bam", seed=0) == RunConfig()


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        (["tau=0.5"], {"tau": 0.5}),
        (["hard=false", "steps=100"], {"hard": False, "steps": 100}),
        (["schedule=cosine"], {"schedule": "cosine"}),
        (["p=null", "ks=[1, 2]"], {"p": None, "ks": [1, 2]}),
        (
            ['name="quoted"', "expr=__import__('os')"],
            {"name": "quoted", "expr": "__import__('os')"},
        ),
        (["note=a=b"], {"note": "a=b"}),
        (None, {}),
    ],
    ids=["float", "bool-int", "string", "null-list", "never-evaluated", "equals-in-value", "none"],
)
def test_parse_key_values(pairs: list[str] | None, expected: dict[str, Any]) -> None:
    assert parse_key_values(pairs, "--strategy-option") == expected


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            ["tau"],
            "invalid --strategy-option 'tau': expected KEY=VALUE, e.g. --strategy-option tau=0.5",
        ),
        (["=1"], "invalid --strategy-option '=1': expected KEY=VALUE"),
        (["tau=1", "tau=2"], "option 'tau' is given twice"),
    ],
    ids=["no-equals", "empty-key", "duplicate"],
)
def test_parse_key_values_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_key_values(pairs, "--strategy-option")


def test_unknown_names_fail_before_data() -> None:
    flags = TrainingFlags(dataset="synthetic")
    with pytest.raises(
        ConfigError, match="unknown backbone 'bert4rec'; valid choices: comirec-dr, comirec-sa"
    ):
        flags.run_config(backbone="bert4rec", strategy="bam", seed=0)
    with pytest.raises(
        ConfigError, match="unknown strategy 'topk'; valid choices: annealed, argmax"
    ):
        flags.run_config(backbone="mind", strategy="topk", seed=0)
    with pytest.raises(DataError, match="data file not found: /no/such/file.csv"):
        TrainingFlags(dataset="/no/such/file.csv").run_config(
            backbone="mind", strategy="bam", seed=0
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "abc"], "Invalid value for '--lr'"),
        (["--loss", "bogus"], "'bogus' is not one of"),
        (["--split", "random"], "'random' is not one of"),
    ],
    ids=["lr-not-a-number", "unknown-loss", "unknown-split"],
)
def test_bad_flag_value_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["train", *args, "--output", str(tmp_path)])

    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "train").exists()


def test_bad_option_value_one_line_error(tmp_path: Path) -> None:
    result = run_cli(
        "train", *TINY, "--strategy-option", "tau", "--output", str(tmp_path), cwd=tmp_path
    )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid --strategy-option 'tau': expected KEY=VALUE, e.g. --strategy-option tau=0.5"
    ]
    assert result.stdout == ""


def test_too_short_dataset_cli_error(tmp_path: Path) -> None:
    # Every user has 3 items: leave-one-out keeps 1 training item each, and an example needs 2.
    data = tmp_path / "short.txt"
    data.write_text("".join(f"{user} {user} {user + 1} {user + 2}\n" for user in range(1, 30)))

    result = run_cli(
        "train", "--dataset", str(data), *TINY, "--output", str(tmp_path / "out"), cwd=tmp_path
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "short" in error_lines[0]
    assert "training" in error_lines[0]
    folder = run_folder(tmp_path / "out")
    assert (folder / runs.CONFIG_FILE).exists()
    assert json.loads((folder / runs.ERROR_FILE).read_text())["error"].startswith("DataError: ")
    assert not (folder / runs.METRICS_FILE).exists()


TIMING_KEYS = ("train_seconds", "eval_seconds")


def test_rerun_from_recorded_config(tmp_path: Path) -> None:
    first = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            "synthetic",
            "--strategy",
            "annealed",
            "--seed",
            "3",
            *TINY,
            "--output",
            str(tmp_path / "first"),
        ],
    )
    assert first.exit_code == 0, first.output
    original = run_folder(tmp_path / "first")

    again = CliRunner().invoke(
        app,
        [
            "train",
            "--config",
            str(original / runs.CONFIG_FILE),
            "--no-progress",
            "--output",
            str(tmp_path / "again"),
        ],
    )
    assert again.exit_code == 0, again.output
    rerun = run_folder(tmp_path / "again")
    assert rerun.name == original.name

    def numbers(folder: Path) -> dict[str, Any]:
        metrics = json.loads((folder / runs.METRICS_FILE).read_text())
        return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}

    assert numbers(rerun) == numbers(original)
    assert (rerun / runs.PER_USER_FILE).read_bytes() == (original / runs.PER_USER_FILE).read_bytes()


def test_rerun_config_errors(tmp_path: Path) -> None:
    missing = run_cli("train", "--config", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "error: config file not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    broken = tmp_path / "config.json"
    broken.write_text('{"run_id": "x"}')
    result = run_cli("train", "--config", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: invalid run config {broken}" in result.stderr


def test_finished_run_is_not_retrained(tmp_path: Path) -> None:
    args = ["train", "--dataset", "synthetic", *TINY, "--output", str(tmp_path)]
    assert CliRunner().invoke(app, args).exit_code == 0
    folder = run_folder(tmp_path)
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0] == (
        f"run {folder.name} already finished; pass --force to train it again"
    )
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps

    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (folder / runs.METRICS_FILE).stat().st_mtime_ns > stamps[runs.METRICS_FILE]


def test_bad_option_fails_before_run_folder(tmp_path: Path) -> None:
    data = tmp_path / "seqs.txt"
    data.write_text("".join(f"{user} 1 2 3 4 5\n" for user in range(1, 6)))
    result = run_cli(
        "train",
        "--dataset",
        str(data),
        "--strategy",
        "gumbel",
        "--strategy-option",
        "tau=-1",
        "--output",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: invalid gumbel option tau=-1: must be a finite number > 0"
    assert "Traceback" not in result.stderr
    # Rejected before the run folder is made.
    assert not (tmp_path / "train").exists()
