"""Figures of a report: entropy and heat-map data checked by hand, every figure written as PNG and PDF."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from report_fixtures import write_ablation_study, write_study

from harness import plots
from harness.report import ReportOptions, load_study, make_report
from harness.report.tables import method_order

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):
    root = write_study(
        tmp_path_factory.mktemp("plots") / "study",
        methods=("comirec-sa+argmax", "comirec-sa+bam", "mind+argmax", "mind+bam"),
        seeds=(0, 1),
    )
    return load_study(root)


def _order(results) -> list[str]:
    return [label for _, label in method_order(results)]


def _check_files(figure: plots.Figure) -> None:
    assert [p.suffix for p in figure.files] == [".png", ".pdf"]
    png, pdf = figure.files
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_normalized_entropy_by_hand():
    shares = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.25],
            [0.5, 0.5, 0.0, 0.0],
            [2.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    entropy = plots.normalized_entropy(shares)
    assert entropy[0] == 0.0
    assert entropy[1] == pytest.approx(1.0)
    assert entropy[2] == pytest.approx(math.log(2) / math.log(4))
    assert entropy[3] == pytest.approx(0.5)
    assert math.isnan(entropy[4])
    assert np.isnan(plots.normalized_entropy(np.ones((3, 1)))).all()


def test_interest_share_matrix_sorting():
    frame = pd.DataFrame(
        {
            "user_key": ["a", "b", "c", "d"],
            "share_0": [0.1, 0.7, 0.0, 0.2],
            "share_1": [0.9, 0.3, 1.0, 0.8],
        }
    )
    matrix = plots.interest_share_matrix(
        frame, np.array(["a", "b", "c", "d"]), ["share_0", "share_1"]
    )
    # share_1 has the larger mean, so it comes first. Users dominated by it
    # come first, by decreasing share: c (1.0), a (0.9), d (0.8), then b.
    np.testing.assert_allclose(matrix, [[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])


def test_heatmaps_one_per_dataset(results, tmp_path):
    figures = plots.interest_heatmaps(results, tmp_path, _order(results), n_users=25, seed=0)
    assert [f.stem for f in figures] == ["heatmap_toy", "heatmap_beta"]
    for figure in figures:
        _check_files(figure)
    assert "25 sampled test users" in figures[0].description


def test_entropy_seed_and_curve_figures(results, tmp_path):
    order = _order(results)
    figures = plots.entropy_plot(results, tmp_path, order)
    figures += plots.seed_plot(results, tmp_path, "recall@20", order)
    figures += plots.learning_curves(results, tmp_path, order)
    assert [f.stem for f in figures] == ["entropy_by_method", "seeds_recall_20", "learning_curves"]
    for figure in figures:
        _check_files(figure)


def test_learning_curves_panel_per_backbone(results, tmp_path, monkeypatch):
    drawn: dict[str, object] = {}
    save = plots._save

    def keep_figure(fig, folder, stem, description):
        drawn[stem] = fig
        return save(fig, folder, stem, description)

    monkeypatch.setattr(plots, "_save", keep_figure)
    figures = plots.learning_curves(results, tmp_path, _order(results))
    _check_files(figures[0])
    fig = drawn["learning_curves"]

    # Rows: (data set, quantity); columns: backbones in table order.
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        f"{d}, {b}" for d in ("toy", "beta") for _ in range(2) for b in ("comirec-sa", "mind")
    ]
    legend = fig.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["argmax", "bam"]
    colours = [handle.get_color() for handle in legend.legend_handles]
    assert colours[0] != colours[1]
    # Each strategy has the same colour on every backbone.
    for ax in fig.axes:
        assert [line.get_color() for line in ax.get_lines()] == colours


def test_heatmap_text_for_one_user(results, tmp_path):
    figures = plots.interest_heatmaps(results, tmp_path, _order(results), n_users=1, seed=0)
    assert "rows are 1 sampled test user," in figures[0].description


def test_learning_curves_skip_missing_files(tmp_path):
    root = write_study(
        tmp_path / "s", datasets=("toy",), methods=("comirec-sa+argmax",), seeds=(0,)
    )
    for run in (root / "runs").iterdir():
        (run / "curve.csv").unlink()
    results = load_study(root)
    assert plots.learning_curves(results, tmp_path / "fig", ["comirec-sa+argmax"]) == []


def test_ablation_plot(tmp_path):
    results = load_study(write_ablation_study(tmp_path / "abl"))
    report = make_report(
        results, ReportOptions(metrics=("recall@20", "ndcg@20"), permutations=100, figures=False)
    )
    figures = plots.ablation_plot(report.table("ablation").data, tmp_path / "fig", "strategy.tau")
    assert [f.stem for f in figures] == ["ablation"]
    _check_files(figures[0])


def _quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("lr", -2.0, 2.0)
    y = trial.suggest_int("num_interests", 1, 8)
    return -((x - 0.5) ** 2) - 0.01 * (y - 4) ** 2


def test_optuna_plots_from_sqlite(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuned = optuna.create_study(
        study_name="toy/comirec-sa+bam",
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    tuned.optimize(_quadratic, n_trials=12)
    # A queue without parameters, like a grid study's rounds, is not a tuning study.
    queue = optuna.create_study(
        study_name="study/grid/round-0000", storage=storage, direction="maximize"
    )
    queue.enqueue_trial({})

    found = plots._optuna_trials(tmp_path, {})
    assert [name for name, *_ in found] == ["toy/comirec-sa+bam"]
    assert len(found[0][1]) == 12

    figures = plots.optuna_plots(tmp_path, {}, tmp_path / "fig")
    assert [f.stem for f in figures] == ["optuna_history", "optuna_importance"]
    for figure in figures:
        _check_files(figure)


def test_optuna_plots_from_recorded_journal(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "elsewhere.journal"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        study_name="tune",
        storage=storage,
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=5)
    figures = plots.optuna_plots(tmp_path, {"storage": str(path)}, tmp_path / "fig")
    assert [f.stem for f in figures] == ["optuna_history", "optuna_importance"]


def test_optuna_plots_from_trials_csv(tmp_path):
    (tmp_path / "tuning").mkdir()
    pd.DataFrame({"number": [0, 1, 2], "value": [0.1, 0.3, 0.2], "state": ["COMPLETE"] * 3}).to_csv(
        tmp_path / "tuning" / "trials.csv", index=False
    )
    figures = plots.optuna_plots(tmp_path, {}, tmp_path / "fig")
    assert [f.stem for f in figures] == ["optuna_history"]


def test_trials_csv_split_by_component(tmp_path):
    (tmp_path / "tuning").mkdir()
    pd.DataFrame(
        {
            "dataset": ["toy"] * 4,
            "backbone": ["mind"] * 4,
            "strategy": ["argmax", "argmax", "bam", "bam"],
            "trial": [0, 1, 0, 1],
            "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
            "value": [0.1, 0.05, 0.2, 0.3],
        }
    ).to_csv(tmp_path / "tuning" / "trials.csv", index=False)
    found = plots._optuna_trials(tmp_path, {})
    assert [name for name, *_ in found] == ["toy/mind+argmax", "toy/mind+bam"]
    assert len(found[0][1]) == 1
    assert list(found[1][1]["number"]) == [0, 1]


def test_no_optuna_data_no_figure(tmp_path):
    assert plots.optuna_plots(tmp_path, {}, tmp_path / "fig") == []
    assert not Path(tmp_path / "fig").exists()
