"""Study specification: seeds, name expansion, option scoping, config paths, cells, presets, study.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.config import DataConfig, ModelConfig, RunConfig, StrategyConfig, TrainConfig
from harness.errors import ConfigError
from harness.study import (
    Ablation,
    StudySpec,
    default_study_name,
    expand_backbones,
    expand_strategies,
    get_preset,
    parse_seeds,
    scope_options,
)
from harness.study.overrides import (
    ConfigPath,
    apply_values,
    coerce_value,
    parse_path,
    read_value,
    with_value,
)
from harness.study.presets import PAPER, QUICK
from harness.study.spec import check_existing, write_study_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", (0, 1, 2)), ("1", (0,)), ("1,5,9", (1, 5, 9)), ("7,", (7,)), (" 2 , 0 ", (2, 0))],
    ids=["count", "one", "list", "trailing-comma", "spaces"],
)
def test_parse_seeds_valid(text: str, expected: tuple[int, ...]) -> None:
    assert parse_seeds(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "at least one seed"),
        ("-2", "at least one seed"),
        ("abc", "expected a count"),
        ("1,1", "listed twice"),
        ("1,-3", "must be >= 0"),
        ("1,x", "seeds are integers"),
        (",", "at least one seed"),
    ],
    ids=[
        "zero",
        "negative-count",
        "text",
        "duplicate",
        "negative-seed",
        "non-integer",
        "empty-list",
    ],
)
def test_parse_seeds_invalid(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_seeds(text)


def test_expand_all_backbones_and_strategies() -> None:
    assert expand_backbones("all") == ("comirec-sa", "comirec-dr", "mind", "remi")
    assert expand_strategies("all") == ("argmax", "bam", "gumbel", "annealed")
    assert expand_backbones("all,sasrec") == ("comirec-sa", "comirec-dr", "mind", "remi", "sasrec")
    assert expand_strategies("uniform,all,label-aware")[0] == "uniform"
    assert expand_strategies("bam,bam") == ("bam",)


def test_expand_unknown_name_lists_valid() -> None:
    with pytest.raises(
        ConfigError, match="unknown backbone 'bert4rec'.*comirec-dr, comirec-sa, mind, remi, sasrec"
    ):
        expand_backbones("mind,bert4rec")
    with pytest.raises(
        ConfigError, match="unknown strategy 'softmax'.*annealed, argmax, bam, gumbel"
    ):
        expand_strategies("softmax")


def test_scope_options_plain_key_goes_to_takers() -> None:
    scoped = scope_options({"tau": 0.5}, ("argmax", "gumbel", "bam"), "strategy")
    assert scoped == {"gumbel": {"tau": 0.5}}


def test_scope_options_scoped_key() -> None:
    scoped = scope_options(
        {"annealed.schedule": "cosine", "hard": False}, ("gumbel", "annealed"), "strategy"
    )
    assert scoped == {"annealed": {"schedule": "cosine"}, "gumbel": {"hard": False}}


def test_scope_options_backbone_shared_key() -> None:
    scoped = scope_options(
        {"routing_axis": "positions"}, ("comirec-sa", "comirec-dr", "mind"), "backbone"
    )
    assert scoped == {
        "comirec-dr": {"routing_axis": "positions"},
        "mind": {"routing_axis": "positions"},
    }


@pytest.mark.parametrize(
    ("raw", "names", "message"),
    [
        (
            {"temperature": 1.0},
            ("argmax", "gumbel"),
            "unknown strategy option 'temperature' for gumbel; valid options: hard, tau",
        ),
        (
            {"tau_ned": 1.0},
            ("bam", "annealed"),
            "unknown strategy option 'tau_ned' for annealed; "
            "valid options: schedule, steps, tau_end, tau_start",
        ),
        (
            {"tau_ned": 1.0},
            ("gumbel", "annealed"),
            "unknown strategy option 'tau_ned' for gumbel or annealed; "
            "valid options: hard, schedule, steps, tau, tau_end, tau_start",
        ),
        (
            {"tau": 1.0},
            ("argmax", "bam"),
            "invalid strategy option 'tau': no strategy of this study takes options",
        ),
        (
            {"bam.tau": 1.0},
            ("argmax", "gumbel"),
            "invalid strategy option 'bam.tau': strategy 'bam' is not in this study; "
            "valid strategy names: argmax, gumbel",
        ),
        (
            {"gumbel.temp": 1.0},
            ("argmax", "gumbel"),
            "unknown strategy option 'temp' for gumbel; valid options: hard, tau",
        ),
        (
            {"argmax.tau": 1.0},
            ("argmax", "gumbel"),
            "invalid strategy option 'argmax.tau': argmax takes no options",
        ),
    ],
    ids=[
        "no-taker",
        "no-taker-skips-optionless",
        "no-taker-of-two",
        "no-options-at-all",
        "scope-not-in-study",
        "unknown-scoped",
        "scoped-takes-none",
    ],
)
def test_scope_options_errors(raw: dict, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        scope_options(raw, names, "strategy")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.lr", ConfigPath("train", "lr")),
        ("model.num_interests", ConfigPath("model", "num_interests")),
        ("strategy.tau", ConfigPath("strategy", "tau", option=True)),
        ("strategy.options.tau", ConfigPath("strategy", "tau", option=True)),
        ("model.reg_lambda", ConfigPath("model", "reg_lambda", option=True)),
        ("model.options.reg_lambda", ConfigPath("model", "reg_lambda", option=True)),
        ("data.k_core", ConfigPath("data", "k_core")),
    ],
)
def test_parse_path_forms(text: str, expected: ConfigPath) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "optimizer.lr",
            "unknown section 'optimizer' in config path 'optimizer.lr'; "
            "valid sections: data, model, strategy, train",
        ),
        ("train.learning_rate", "unknown train setting 'learning_rate'.*lr"),
        ("train", "expected SECTION.FIELD"),
        ("train.threads", "does not change a run's results"),
        ("model.backbone", "use --backbone instead"),
        ("data.source", "use --dataset instead"),
        ("strategy.name", "use --strategy instead"),
    ],
)
def test_parse_path_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_path(text)


def test_parse_path_names_factor() -> None:
    with pytest.raises(ConfigError) as info:
        parse_path("strat.tau_end", label="factor")
    assert str(info.value) == (
        "unknown section 'strat' in factor 'strat.tau_end'; "
        "valid sections: data, model, strategy, train"
    )


def test_coerce_value_by_declared_type() -> None:
    assert coerce_value(parse_path("model.num_interests"), "8", "mind", "bam") == 8
    assert coerce_value(parse_path("train.lr"), "0.01", "mind", "bam") == pytest.approx(0.01)
    assert coerce_value(parse_path("strategy.hard"), "false", "mind", "gumbel") is False
    assert coerce_value(parse_path("train.valid_users"), "none", "mind", "bam") is None
    assert coerce_value(parse_path("model.routing_axis"), "positions", "mind", "bam") == "positions"


def test_coerce_value_errors() -> None:
    with pytest.raises(ConfigError, match=r"invalid value 'many' for model.num_interests"):
        coerce_value(parse_path("model.num_interests"), "many", "mind", "bam")
    with pytest.raises(ConfigError, match="strategy .bam. takes no options"):
        coerce_value(parse_path("strategy.tau"), "1", "mind", "bam")
    with pytest.raises(ConfigError, match="unknown mind option 'reg_lambda'"):
        coerce_value(parse_path("model.reg_lambda"), "1", "mind", "bam")


def test_with_value_changes_one_setting() -> None:
    base = RunConfig(
        model=ModelConfig(backbone="remi"), strategy=StrategyConfig("gumbel", {"hard": False})
    )
    changed = with_value(base, parse_path("strategy.tau"), 0.5)
    assert changed.strategy.options == {"hard": False, "tau": 0.5}
    assert base.strategy.options == {"hard": False}
    assert read_value(changed, parse_path("strategy.options.tau")) == 0.5
    assert with_value(base, parse_path("train.lr"), 0.01).train.lr == 0.01
    assert changed.run_id != base.run_id


def test_with_value_validates() -> None:
    with pytest.raises(ConfigError, match="num_interests"):
        with_value(RunConfig(), parse_path("model.num_interests"), 0)


def test_apply_values_accepts_both_forms() -> None:
    config = apply_values(
        RunConfig(), {"train.lr": 0.003, "model.options.reg_lambda": 10.0, "strategy.tau": 2.0}
    )
    assert config.train.lr == 0.003
    assert config.model.options == {"reg_lambda": 10.0}
    assert config.strategy.options == {"tau": 2.0}


def _spec(**changes) -> StudySpec:
    base = StudySpec(
        name="s",
        datasets=(DataConfig(),),
        backbones=("comirec-sa", "mind"),
        strategies=("argmax", "gumbel"),
        seeds=(0, 1, 2),
        train=TrainConfig(max_steps=10),
    )
    return dataclasses.replace(base, **changes)


def test_cells_are_the_cartesian_product_in_order() -> None:
    spec = _spec(strategy_options={"gumbel": {"tau": 0.5}})
    cells = spec.cells()
    assert len(cells) == 1 * 2 * 2 * 3
    assert [(c.backbone, c.strategy, c.seed) for c in cells[:4]] == [
        ("comirec-sa", "argmax", 0),
        ("comirec-sa", "argmax", 1),
        ("comirec-sa", "argmax", 2),
        ("comirec-sa", "gumbel", 0),
    ]
    assert len({cell.run_id for cell in cells}) == len(cells)
    expected = RunConfig(
        data=DataConfig(),
        model=ModelConfig(backbone="mind"),
        strategy=StrategyConfig("gumbel", {"tau": 0.5}),
        train=TrainConfig(max_steps=10),
        seed=2,
    )
    assert cells[-1].config == expected
    assert cells[-1].run_id == expected.run_id


def test_cells_of_two_datasets(tmp_path) -> None:
    path = tmp_path / "beauty.txt"
    path.write_text("u1 a b c\n")
    spec = _spec(datasets=(DataConfig(), DataConfig(source=str(path))), seeds=(4,))
    cells = spec.cells()
    assert [cell.dataset for cell in cells] == ["synthetic"] * 4 + ["beauty"] * 4
    assert {cell.seed for cell in cells} == {4}


def test_ablation_cells_vary_the_factor() -> None:
    spec = _spec(
        backbones=("remi",),
        strategies=("gumbel",),
        seeds=(0, 1),
        ablation=Ablation("strategy.tau", (0.1, 1.0)),
    )
    cells = spec.cells()
    assert [(cell.value, cell.seed) for cell in cells] == [(0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)]
    assert [cell.config.strategy.options["tau"] for cell in cells] == [0.1, 0.1, 1.0, 1.0]
    assert spec.to_dict()["ablation"] == {
        "factor": "strategy.tau",
        "path": "strategy.options.tau",
        "values": [0.1, 1.0],
    }


def test_ablation_requires_one_backbone_and_strategy() -> None:
    with pytest.raises(ConfigError, match="one backbone and one strategy"):
        _spec(ablation=Ablation("train.lr", (0.1,)))
    with pytest.raises(ConfigError, match="strategy .argmax. takes no options"):
        _spec(
            backbones=("mind",), strategies=("argmax",), ablation=Ablation("strategy.tau", (0.1,))
        )
    with pytest.raises(ConfigError, match="listed twice"):
        Ablation("train.lr", (0.1, 0.1))


def test_tune_cells_apply_best_settings() -> None:
    spec = _spec(mode="tune", seeds=(0, 1))
    with pytest.raises(ValueError, match="best settings"):
        spec.cells()
    tuned = {"synthetic/mind+gumbel": {"train.lr": 0.004, "strategy.options.tau": 0.3}}
    cells = spec.cells(tuned)
    assert [(cell.backbone, cell.strategy) for cell in cells] == [("mind", "gumbel")] * 2
    assert {cell.config.train.lr for cell in cells} == {0.004}
    assert {cell.config.strategy.options["tau"] for cell in cells} == {0.3}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "a/b"}, "invalid study name"),
        ({"name": ""}, "invalid study name"),
        ({"seeds": ()}, "at least one seed"),
        ({"seeds": (1, 1)}, "distinct"),
        ({"trials": 0}, "at least one trial"),
        ({"mode": "random"}, "unknown study mode 'random'; valid choices: grid, tune"),
        ({"datasets": ()}, "at least one --dataset"),
        ({"datasets": (DataConfig(), DataConfig())}, "both named 'synthetic'"),
    ],
)
def test_spec_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(**changes)


def test_identity_ignores_settings_without_effect() -> None:
    spec = _spec()
    same = _spec(
        name="other",
        train=TrainConfig(max_steps=10, threads=3, device="cpu"),
        trials=99,
        preset="quick",
    )
    assert spec.identity() == same.identity()
    assert spec.identity() != _spec(seeds=(0, 1)).identity()
    assert spec.identity() != _spec(train=TrainConfig(max_steps=11)).identity()


def test_check_existing_rejects_another_study(tmp_path) -> None:
    spec = _spec()
    write_study_json(tmp_path, spec, storage="optuna.journal", cells=spec.cells())
    check_existing(tmp_path, spec)
    check_existing(tmp_path, _spec(trials=50))
    with pytest.raises(ConfigError, match=r"different study \(seeds: \[0, 1, 2\] -> \[0, 1\]\)"):
        check_existing(tmp_path, _spec(seeds=(0, 1)))


def test_study_json_content(tmp_path) -> None:
    spec = _spec()
    write_study_json(tmp_path, spec, storage="sqlite:///x.db", cells=spec.cells())
    data = json.loads((tmp_path / "study.json").read_text())
    assert data["name"] == "s"
    assert data["mode"] == "grid"
    assert data["datasets"] == ["synthetic"]
    assert data["backbones"] == ["comirec-sa", "mind"]
    assert data["seeds"] == [0, 1, 2]
    assert data["train"]["max_steps"] == 10
    assert data["storage"] == "sqlite:///x.db"
    assert len(data["runs"]) == 12
    assert data["runs"][0] == {
        "run_id": spec.cells()[0].run_id,
        "dataset": "synthetic",
        "backbone": "comirec-sa",
        "strategy": "argmax",
        "method": "comirec-sa+argmax",
        "seed": 0,
    }


def test_default_study_name() -> None:
    assert default_study_name((DataConfig(),), "grid") == "synthetic-grid"
    assert (
        default_study_name((DataConfig(), DataConfig(source="x/Beauty.txt")), "tune")
        == "synthetic+Beauty-tune"
    )
    sweep = Ablation("strategy.tau", (1.0,))
    assert (
        default_study_name((DataConfig(),), "grid", sweep, "remi", "gumbel")
        == "synthetic-remi+gumbel-strategy.tau"
    )


def test_preset_apply_keeps_explicit_fields() -> None:
    train = TrainConfig(max_steps=77, lr=0.01)
    quick = QUICK.apply(train)
    assert quick.max_steps == 500
    assert quick.eval_every == 100
    assert quick.patience == 2
    assert quick.num_negatives == 256
    assert quick.valid_users == 500
    assert quick.lr == 0.01
    assert QUICK.apply(train, explicit=frozenset({"max_steps"})).max_steps == 77


def test_paper_preset_is_the_design_protocol() -> None:
    train = PAPER.apply(TrainConfig(max_steps=5))
    assert train == TrainConfig()
    assert (train.lr, train.batch_size, train.num_negatives, train.max_steps) == (
        1e-3,
        128,
        1280,
        20_000,
    )
    assert ModelConfig() == ModelConfig(dim=64, num_interests=4, max_len=50)


def test_get_preset_unknown() -> None:
    assert get_preset("quick") is QUICK
    with pytest.raises(ConfigError, match="unknown preset 'fast'; valid choices: paper, quick"):
        get_preset("fast")
