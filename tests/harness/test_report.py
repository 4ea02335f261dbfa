"""Report tables, comparisons and outputs on hand-made study folders with known results."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import (
    BALANCE,
    MIND_BAM_SHIFT,
    MIND_BAM_SWING,
    N_USERS,
    tau_effect,
    write_ablation_study,
    write_failed_run,
    write_run,
    write_study,
)

from harness import stats
from harness.errors import ConfigError, DataError
from harness.report import (
    ReportOptions,
    build_report,
    load_study,
    make_report,
    render,
    write_report,
)
from harness.report.collect import resolve_factor
from harness.report.compare import compare_methods

FAST = {"permutations": 500, "figures": False}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_study(tmp_path_factory.mktemp("grid") / "grid")


@pytest.fixture(scope="module")
def report(study: Path):
    return make_report(load_study(study), ReportOptions(**FAST))


def _independent_seed_means(study: Path) -> pd.DataFrame:
    """Mean over users of each per_user.parquet, then over seeds, read without the report code."""
    rows = []
    for run_dir in sorted((study / "runs").iterdir()):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        frame = pd.read_parquet(run_dir / "per_user.parquet")
        rows.append(
            {
                "dataset": metrics["dataset"],
                "method": metrics["method"],
                "seed": metrics["seed"],
                "recall@20": frame["recall@20"].mean(),
            }
        )
    runs = pd.DataFrame(rows)
    return runs.groupby(["dataset", "method"])["recall@20"].agg(["mean", "std"])


def test_load_study_reads_every_run(study):
    results = load_study(study)
    assert len(results.runs) == 2 * 6 * 3
    assert set(results.datasets) == {"toy", "beta"}
    assert set(results.strategies) == {"argmax", "bam", "uniform"}
    assert set(results.metrics) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert results.missing.empty
    assert results.dataset_stats["toy"]["users"] == 1000


def test_main_table_means_match_files(study, report):
    expected = _independent_seed_means(study)
    data = report.table("main").data
    for row in data[data["metric"] == "recall@20"].itertuples():
        assert row.mean == pytest.approx(expected.loc[(row.dataset, row.method), "mean"], abs=1e-12)
        assert row.std == pytest.approx(expected.loc[(row.dataset, row.method), "std"], abs=1e-12)
        assert row.n_seeds == 3


def test_main_table_bold_and_underline(report):
    table = report.table("main")
    header = list(table.flat_columns)
    for row in table.rows:
        cells = dict(zip(header, row.cells, strict=True))
        assert cells["comirec-sa+bam"].bold
        assert cells["mind+bam"].underline
        assert sum(c.bold for c in row.cells) == 1
        assert sum(c.underline for c in row.cells) == 1


def test_main_table_significance_marks(report):
    table = report.table("main")
    header = list(table.flat_columns)
    expected = {
        "comirec-sa+argmax": "",
        "comirec-sa+bam": "better",
        "comirec-sa+uniform": "worse",
        "mind+argmax": "",
        "mind+bam": "",
        "mind+uniform": "worse",
        "Improv.": "",
    }
    for row in table.rows:
        marks = {name: cell.mark for name, cell in zip(header, row.cells, strict=True)}
        assert marks == expected


def test_improvement_is_best_over_second(report):
    data = report.table("main").data
    chosen = data[(data["dataset"] == "toy") & (data["metric"] == "ndcg@20")]
    best = chosen.loc[chosen["method"] == "comirec-sa+bam", "mean"].item()
    second = chosen.loc[chosen["method"] == "mind+bam", "mean"].item()
    assert chosen["improvement_pct"].iloc[0] == pytest.approx((best - second) / second * 100)
    row = next(r for r in report.table("main").rows if r.labels == ("", "ndcg@20"))
    assert row.cells[-1].text.startswith("+")
    assert row.cells[-1].text.endswith("%")


def test_per_user_t_statistic_by_hand(report):
    # mind+bam minus mind+argmax is 0.002 + 0.03 on even users and 0.002 - 0.03
    # on odd ones, scaled by 1 for recall@20, in every seed. So mean = 0.002,
    # sd = 0.03 sqrt(40/39) and t = 0.002 sqrt(39) / 0.03.
    rows = report.comparisons
    row = rows[
        (rows["dataset"] == "toy")
        & (rows["metric"] == "recall@20")
        & (rows["method"] == "mind+bam")
        & (rows["level"] == "per-user")
    ].iloc[0]
    assert row["reference"] == "mind+argmax"
    assert row["n"] == N_USERS
    assert row["mean_diff"] == pytest.approx(MIND_BAM_SHIFT, abs=1e-12)
    assert row["t_statistic"] == pytest.approx(
        MIND_BAM_SHIFT * math.sqrt(N_USERS - 1) / MIND_BAM_SWING, rel=1e-9
    )
    sd = MIND_BAM_SWING * math.sqrt(N_USERS / (N_USERS - 1))
    assert row["cohens_d"] == pytest.approx(MIND_BAM_SHIFT / sd, rel=1e-9)
    assert row["p_t"] > 0.5


def test_per_seed_level_pairs_seed_means(study, report):
    rows = report.comparisons
    row = rows[
        (rows["dataset"] == "beta")
        & (rows["metric"] == "ndcg@10")
        & (rows["method"] == "comirec-sa+bam")
        & (rows["level"] == "per-seed")
    ].iloc[0]
    means = {}
    for run_dir in (study / "runs").iterdir():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        if metrics["dataset"] == "beta":
            means[(metrics["method"], metrics["seed"])] = metrics["test"]["ndcg@10"]
    diffs = [means[("comirec-sa+bam", s)] - means[("comirec-sa+argmax", s)] for s in (0, 1, 2)]
    assert row["n"] == 3
    assert row["mean_diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    # Three seeds: the sign-flip test enumerates 8 vectors, so p >= 2/8.
    assert row["permutations"] == 8
    assert row["p_randomization"] == pytest.approx(0.25)


def test_holm_family_is_each_level(report):
    rows = report.comparisons
    for level in ("per-user", "per-seed"):
        mine = rows[rows["level"] == level]
        # 2 data sets x 4 metrics x 4 non-reference methods.
        assert len(mine) == 32
        for test in ("t", "wilcoxon", "randomization"):
            np.testing.assert_allclose(
                mine[f"p_{test}_holm"], stats.holm(mine[f"p_{test}"].to_numpy())
            )


def test_seed_table_counts_wins(study, report):
    data = report.table("seeds").data
    wins = data.set_index(["dataset", "metric", "method"])["wins"]
    assert (wins.xs("comirec-sa+bam", level="method") == 3).all()
    assert wins.drop("comirec-sa+bam", level="method").sum() == 0
    expected = _independent_seed_means(study)
    row = data[
        (data["dataset"] == "toy")
        & (data["metric"] == "recall@20")
        & (data["method"] == "mind+argmax")
    ].iloc[0]
    assert row["std"] == pytest.approx(expected.loc[("toy", "mind+argmax"), "std"])
    assert row["cv"] == pytest.approx(row["std"] / row["mean"])
    assert row["min"] <= row["mean"] <= row["max"]


def test_balance_table_means(report):
    data = report.table("balance").data.set_index(["dataset", "method"])
    assert data.loc[("toy", "comirec-sa+bam"), "entropy_norm_mean"] == pytest.approx(
        BALANCE["bam"]["entropy_norm"]
    )
    assert data.loc[("toy", "mind+argmax"), "max_share_mean"] == pytest.approx(
        BALANCE["argmax"]["max_share"]
    )
    # Redundancy is 0.2 + 0.01 * seed over seeds 0, 1, 2.
    assert data.loc[("beta", "mind+uniform"), "redundancy_mean"] == pytest.approx(0.21)
    assert data.loc[("beta", "mind+uniform"), "redundancy_std"] == pytest.approx(0.01)


def test_dataset_table(report):
    data = report.table("datasets").data.set_index("dataset")
    assert data.loc["toy", "interactions"] == 20000
    assert data.loc["toy", "avg_length"] == pytest.approx(20.0)
    row = report.table("datasets").rows[0]
    assert row.cells[-1].text == "4.0000%"


def test_dataset_table_skipped_without_stats(tmp_path, caplog):
    root = write_study(
        tmp_path / "plain",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0,),
        dataset_stats=False,
    )
    with caplog.at_level(logging.INFO, logger="harness.report"):
        result = make_report(load_study(root), ReportOptions(**FAST))
    assert "datasets" not in [t.name for t in result.tables]
    assert "dataset_stats" in caplog.text
    assert any("data set table" in note for note in result.notes)


def _tabular_rows(tex: str) -> list[list[str]]:
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0]
    rows = []
    for line in body.splitlines():
        line = line.strip()
        if line.endswith(r"\\"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)&", line[:-2])])
    return rows


def test_latex_structure_and_emphasis(report):
    tex = render.to_latex(report.table("main"))
    assert tex.count(r"\toprule") == 1
    assert tex.count(r"\bottomrule") == 1
    assert r"\cmidrule(lr){3-5} \cmidrule(lr){6-8}" in tex
    assert r"\multicolumn{3}{c}{comirec-sa}" in tex
    rows = _tabular_rows(tex)
    assert len(rows) == 8
    columns = ["Dataset", "Metric", *report.table("main").flat_columns]
    for row in rows:
        cells = dict(zip(columns, row, strict=True))
        assert cells["comirec-sa+bam"].startswith(r"\textbf{")
        assert r"$^{\dagger}$" in cells["comirec-sa+bam"]
        assert cells["mind+bam"].startswith(r"\underline{")
        assert "dagger" not in cells["mind+bam"]
        assert r"$^{\ddagger}$" in cells["comirec-sa+uniform"]
        assert r"\textbf" not in cells["comirec-sa+argmax"]
        assert "dagger" not in cells["comirec-sa+argmax"]
        assert re.fullmatch(r"\+\d+\.\d\d\\%", cells["Improv."])
    assert rows[0][0] == "toy"
    assert rows[1][0] == ""


def test_latex_escapes_specials():
    assert render.escape_latex("a_b 50% #1 & {x}") == r"a\_b 50\% \#1 \& \{x\}"


def test_markdown_emphasis(report):
    text = render.to_markdown(report.table("main"))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Dataset | Metric | comirec-sa+argmax | comirec-sa+bam")
    first = [cell.strip() for cell in lines[1].strip("|").split(" | ")]
    assert first[3].startswith("**")
    assert "<sup>†</sup>" in first[3]
    assert first[6].startswith("<u>")
    assert "<sup>‡</sup>" in first[4]


def test_written_outputs_and_index(study, tmp_path):
    output = tmp_path / "out"
    result = make_report(load_study(study), ReportOptions(**FAST))
    index = write_report(result, output)
    text = index.read_text()
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (output / link).is_file(), link
    for name in ("main", "seeds", "balance", "datasets"):
        for suffix in ("tex", "md", "csv"):
            assert f"tables/{name}.{suffix}" in text
    csv = pd.read_csv(output / "tables" / "main.csv")
    pd.testing.assert_frame_equal(csv, result.table("main").data, check_dtype=False)
    comparisons = pd.read_csv(output / "stats.csv")
    assert len(comparisons) == 64
    assert {
        "p_t_holm",
        "p_wilcoxon_holm",
        "p_randomization_holm",
        "cohens_d",
        "ci_low",
        "ci_high",
    } <= set(comparisons.columns)
    assert "None: every expected" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine")
def test_latex_document_compiles(study, tmp_path):
    output = tmp_path / "out"
    write_report(make_report(load_study(study), ReportOptions(**FAST)), output)
    folder = output / "tables"
    for _ in range(2):  # longtable settles its column widths on the second pass
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout[-2000:]
    assert (folder / "tables.pdf").stat().st_size > 1000
    assert "Overfull" not in done.stdout


def test_partial_study_lists_missing_cells(tmp_path, caplog):
    root = write_study(
        tmp_path / "partial",
        skip=frozenset(
            {("toy", "mind+bam", 2), ("beta", "comirec-sa+bam", 0), ("beta", "comirec-sa+bam", 1)}
        ),
    )
    write_failed_run(root / "runs", dataset="toy", backbone="mind", strategy="bam", seed=2)
    corrupt = next(
        p
        for p in sorted((root / "runs").iterdir())
        if json.loads((p / "metrics.json").read_text())["method"] == "mind+uniform"
        and json.loads((p / "metrics.json").read_text())["seed"] == 1
        and json.loads((p / "metrics.json").read_text())["dataset"] == "toy"
    )
    (corrupt / "metrics.json").write_text('{"status": "finished", "method": ')

    with caplog.at_level(logging.WARNING, logger="harness.report"):
        results = load_study(root)
    assert str(corrupt / "metrics.json") in caplog.text

    missing = results.missing.set_index(["dataset", "method", "seed"])
    assert missing.loc[("toy", "mind+bam", 2), "status"] == "failed"
    assert "loss is nan" in missing.loc[("toy", "mind+bam", 2), "detail"]
    assert missing.loc[("toy", "mind+uniform", 1), "status"] == "corrupt"
    assert missing.loc[("beta", "comirec-sa+bam", 0), "status"] == "not run"
    assert len(missing) == 4

    result = make_report(results, ReportOptions(**FAST))
    rows = result.comparisons
    seed_row = rows[
        (rows["dataset"] == "beta")
        & (rows["method"] == "comirec-sa+bam")
        & (rows["level"] == "per-seed")
    ]
    assert (seed_row["n"] == 1).all()
    assert seed_row["p_t"].isna().all()
    data = result.table("main").data
    assert (
        data.loc[(data["dataset"] == "beta") & (data["method"] == "comirec-sa+bam"), "n_seeds"]
        .eq(1)
        .all()
    )

    index = write_report(result, tmp_path / "out").read_text()
    assert "4 cells have no finished run" in index
    assert "| toy | mind+bam |  | 2 | failed |" in index
    assert (tmp_path / "out" / "missing.csv").is_file()


def test_study_json_run_list_sets_expected_cells(tmp_path):
    root = write_study(
        tmp_path / "listed",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0,),
    )
    spec = json.loads((root / "study.json").read_text())
    spec["runs"] = [
        {
            "run_id": "x",
            "dataset": "toy",
            "method": m,
            "backbone": m.split("+")[0],
            "strategy": m.split("+")[1],
            "seed": s,
        }
        for m in ("comirec-sa+argmax", "comirec-sa+bam", "sasrec+argmax")
        for s in (0,)
    ]
    (root / "study.json").write_text(json.dumps(spec))
    missing = load_study(root).missing
    assert list(missing["method"]) == ["sasrec+argmax"]


def test_duplicate_runs_keep_latest(tmp_path, caplog):
    root = write_study(
        tmp_path / "dup",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0,),
    )
    extra = write_run(
        root / "runs",
        dataset="toy",
        backbone="comirec-sa",
        strategy="bam",
        seed=0,
        options={"unused": 1},
    )
    config = json.loads((extra / "config.json").read_text())
    config["created"] = "2099-01-01T00:00:00"
    (extra / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="harness.report"):
        results = load_study(root)
    assert len(results.runs) == 2
    assert extra.name in set(results.runs["run_id"])
    assert "using the latest" in caplog.text


def test_ablation_table_and_factor_values(tmp_path):
    root = write_ablation_study(tmp_path / "abl")
    results = load_study(root)
    assert set(results.runs["variant"]) == {"", "tau=0.1", "tau=0.5", "tau=1"}
    result = make_report(results, ReportOptions(metrics=("recall@20",), **FAST))
    table = result.table("ablation")
    assert table.columns == ("tau=0.1", "tau=0.5", "tau=1")
    row = table.rows[0]
    assert row.labels == ("toy", "recall@20", "comirec-sa+annealed")
    assert [c.bold for c in row.cells] == [False, True, False]
    data = table.data.set_index("value")
    # The fixture adds tau_effect(tau) to the same base users; tau = 0.5 is 0.08 above the base.
    gap = data.loc[0.5, "mean"] - data.loc[0.1, "mean"]
    assert gap == pytest.approx(tau_effect(0.5) - tau_effect(0.1), abs=0.01)
    assert (data["n_seeds"] == 3).all()
    # Every ablated variant is compared with the argmax runs, which have no tau.
    refs = set(result.comparisons["reference"])
    assert refs == {"comirec-sa+argmax"}


@pytest.mark.parametrize(
    ("factor", "expected"),
    [
        ("strategy.tau", 0.5),
        ("strategy.options.tau", 0.5),
        ("model.num_interests", 4),
        ("train.hard_negative_beta", 0.0),
        ("model.options.reg_lambda", 0.1),
        ("model.reg_lambda", 0.1),
        ("strategy.p", None),
    ],
    ids=[
        "option-short",
        "option-explicit",
        "model-field",
        "train-field",
        "model-option",
        "model-option-short",
        "absent",
    ],
)
def test_resolve_factor(factor, expected):
    config = {
        "model": {"num_interests": 4, "options": {"reg_lambda": 0.1}},
        "strategy": {"name": "annealed", "options": {"tau": 0.5}},
        "train": {"hard_negative_beta": 0.0},
    }
    assert resolve_factor(config, factor) == expected


def test_not_a_study_folder(tmp_path):
    with pytest.raises(DataError, match="no runs/ subfolder"):
        load_study(tmp_path)


def test_no_finished_runs(tmp_path):
    runs = tmp_path / "empty" / "runs"
    runs.mkdir(parents=True)
    write_failed_run(runs, dataset="toy", backbone="mind", strategy="bam", seed=0)
    with pytest.raises(DataError, match=r"no finished runs \(1 failed\)"):
        load_study(tmp_path / "empty")


def test_unknown_reference_lists_strategies(study):
    expected = (
        "this study has no runs of strategy 'gumbel'; "
        "pass --reference with one of: argmax, bam, uniform"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        make_report(load_study(study), ReportOptions(reference="gumbel", **FAST))


def test_unknown_metric_lists_metrics(study):
    with pytest.raises(ConfigError, match="unknown metric 'hit@5'.*ndcg@10"):
        make_report(load_study(study), ReportOptions(metrics=("hit@5",), **FAST))


@pytest.mark.parametrize(
    "options",
    [{"test": "z"}, {"level": "per-item"}, {"formats": ("html",)}, {"alpha": 1.5}, {"metrics": ()}],
    ids=["test", "level", "format", "alpha", "metrics"],
)
def test_invalid_options(options):
    with pytest.raises(ConfigError):
        ReportOptions(**options)


def test_compare_methods_is_deterministic(study):
    results = load_study(study)
    first = compare_methods(results, ["recall@20"], "argmax", seed=3, n_permutations=300)
    second = compare_methods(results, ["recall@20"], "argmax", seed=3, n_permutations=300)
    pd.testing.assert_frame_equal(first, second)


def test_build_report_default_output(tmp_path):
    root = write_study(
        tmp_path / "small",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0, 1),
    )
    build_report(root, ReportOptions(**FAST))
    assert (root / "report" / "index.md").is_file()
    assert (root / "report" / "tables" / "main.tex").is_file()


def test_tuning_table_from_best_params(tmp_path):
    root = write_study(
        tmp_path / "tune",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0,),
    )
    (root / "tuning").mkdir()
    best = {
        "objective": "valid recall@20",
        "components": {
            "toy/comirec-sa+bam": {
                "dataset": "toy",
                "backbone": "comirec-sa",
                "strategy": "bam",
                "params": {"train.lr": 0.0021133, "strategy.tau": 0.5},
                "value": 0.0385,
                "trial": 3,
                "trials": {"COMPLETE": 7, "PRUNED": 2},
            }
        },
    }
    (root / "tuning" / "best_params.json").write_text(json.dumps(best))
    table = make_report(load_study(root), ReportOptions(**FAST)).table("tuning")
    assert table.columns == ("Best value", "Best trial", "Trials", "strategy.tau", "train.lr")
    assert [c.text for c in table.rows[0].cells] == ["0.0385", "3", "7", "0.5", "0.00211"]
    assert table.data.loc[0, "train.lr"] == pytest.approx(0.0021133)


def test_tuning_table_unreadable_file_skipped(tmp_path, caplog):
    root = write_study(
        tmp_path / "tune", datasets=("toy",), methods=("comirec-sa+argmax",), seeds=(0,)
    )
    (root / "tuning").mkdir()
    (root / "tuning" / "best_params.json").write_text("[]")
    with caplog.at_level(logging.WARNING, logger="harness.report"):
        result = make_report(load_study(root), ReportOptions(**FAST))
    assert "tuning" not in [t.name for t in result.tables]
    assert "best_params.json" in caplog.text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_default_reference_absent_gives_unmarked_report(tmp_path, caplog):
    # A tune study over `--strategies bam,annealed` has no argmax runs.
    root = write_study(
        tmp_path / "tune",
        datasets=("toy",),
        methods=("comirec-sa+bam", "comirec-sa+annealed"),
        seeds=(0, 1),
        strategies=("bam", "annealed"),
    )
    with caplog.at_level(logging.INFO, logger="harness.report"):
        result = make_report(load_study(root), ReportOptions(**FAST))
    assert result.reference is None
    assert result.comparisons.empty
    main = result.table("main")
    assert all(cell.mark == "" for row in main.rows for cell in row.cells)
    assert "No significance marks" in " ".join(main.notes)
    assert "reference:" not in main.title
    assert any("no argmax runs" in note and "bam, annealed" in note for note in result.notes)
    assert any("no significance marks" in message for message in _warnings(caplog))

    index = write_report(result, tmp_path / "out").read_text()
    assert "Reference strategy: none" in index
    assert "--reference and one of: bam, annealed" in index
    assert "stats.csv](stats.csv): only a header" in index


def test_explicit_reference_in_study_without_argmax(tmp_path):
    root = write_study(
        tmp_path / "tune",
        datasets=("toy",),
        methods=("comirec-sa+bam", "comirec-sa+uniform"),
        seeds=(0, 1),
        strategies=("bam", "uniform"),
    )
    results = load_study(root)
    result = make_report(results, ReportOptions(reference="bam", **FAST))
    assert result.reference == "bam"
    assert set(result.comparisons["method"]) == {"comirec-sa+uniform"}
    with pytest.raises(ConfigError, match=re.escape("pass --reference with one of: bam, uniform")):
        make_report(results, ReportOptions(reference="argmax", **FAST))


def test_ablation_without_argmax_has_no_warning(tmp_path, caplog):
    # `harness ablation` varies one setting of one backbone and one strategy.
    root = write_ablation_study(tmp_path / "abl", with_argmax=False)
    with caplog.at_level(logging.INFO, logger="harness.report"):
        result = make_report(
            load_study(root), ReportOptions(metrics=("recall@20",), permutations=100)
        )
        write_report(result, tmp_path / "out")
    assert _warnings(caplog) == []
    assert result.reference is None
    assert result.table("ablation").columns == ("tau=0.1", "tau=0.5", "tau=1")
    assert (tmp_path / "out" / "figures" / "ablation.png").is_file()
    index = (tmp_path / "out" / "index.md").read_text()
    assert "compare the values of strategy.tau" in index
    assert "no significance test for" not in index


def test_argmax_ablation_has_no_warning(tmp_path, caplog):
    # An ablation of argmax itself: every run is a reference run, so nothing is compared.
    root = write_ablation_study(tmp_path / "abl", strategy="argmax", with_argmax=False)
    with caplog.at_level(logging.INFO, logger="harness.report"):
        result = make_report(load_study(root), ReportOptions(metrics=("recall@20",), **FAST))
    assert _warnings(caplog) == []
    assert result.reference == "argmax"
    assert result.comparisons.empty
    assert result.notes == ()
    assert "ablation" in [t.name for t in result.tables]


def test_untested_note_leaves_out_reference(tmp_path):
    # comirec-sa+bam never finished; mind has no argmax run at all.
    root = write_study(
        tmp_path / "partial",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam", "mind+bam"),
        seeds=(0,),
        skip=frozenset({("toy", "comirec-sa+bam", 0)}),
    )
    result = make_report(load_study(root), ReportOptions(**FAST))
    untested = [note for note in result.notes if "no significance test" in note]
    assert untested == [
        "No argmax run on the same backbone, so no significance test for: mind+bam."
    ]


def test_untested_note_absent_when_only_reference_finished(tmp_path):
    root = write_study(
        tmp_path / "partial",
        datasets=("toy",),
        methods=("comirec-sa+argmax", "comirec-sa+bam"),
        seeds=(0,),
        skip=frozenset({("toy", "comirec-sa+bam", 0)}),
    )
    result = make_report(load_study(root), ReportOptions(**FAST))
    assert not any("no significance test" in note for note in result.notes)


def test_index_counts_use_singular(tmp_path):
    root = write_study(
        tmp_path / "one",
        datasets=("toy",),
        methods=("comirec-sa+argmax",),
        seeds=(0,),
        strategies=("argmax", "bam"),
    )
    index = write_report(
        make_report(load_study(root), ReportOptions(**FAST)), tmp_path / "out"
    ).read_text()
    assert "Built from 1 finished run in" in index
    assert "(1 data set, 1 method, 1 seed)" in index
    assert "1 cell has no finished run;" in index


def test_method_order_follows_study_json(tmp_path):
    methods = tuple(
        f"{b}+{s}" for b in ("comirec-sa", "mind") for s in ("argmax", "bam", "uniform")
    )
    root = write_study(
        tmp_path / "ordered",
        datasets=("toy",),
        methods=methods,
        seeds=(0, 1),
        backbones=("mind", "comirec-sa"),
        strategies=("uniform", "argmax", "bam"),
    )
    expected = [f"{b}+{s}" for b in ("mind", "comirec-sa") for s in ("uniform", "argmax", "bam")]
    result = make_report(load_study(root), ReportOptions(metrics=("recall@20",), **FAST))
    assert list(result.table("main").flat_columns) == [*expected, "Improv."]
    assert result.table("main").groups == (("mind", 3), ("comirec-sa", 3), ("", 1))
    assert [row.labels[2] for row in result.table("seeds").rows] == expected
    assert [row.labels[1] for row in result.table("balance").rows] == expected


def test_method_order_sorted_without_study_json(tmp_path):
    methods = ("mind+uniform", "mind+argmax", "comirec-sa+bam", "comirec-sa+argmax")
    root = write_study(tmp_path / "bare", datasets=("toy",), methods=methods, seeds=(0,))
    (root / "study.json").unlink()
    result = make_report(load_study(root), ReportOptions(metrics=("recall@20",), **FAST))
    assert list(result.table("main").flat_columns) == [
        "comirec-sa+argmax",
        "comirec-sa+bam",
        "mind+argmax",
        "mind+uniform",
        "Improv.",
    ]


def test_ablation_variants_in_declared_order(tmp_path):
    root = write_ablation_study(tmp_path / "abl", taus=(2.0, 0.5, 10.0), seeds=(0,))
    result = make_report(load_study(root), ReportOptions(metrics=("recall@20",), **FAST))
    assert list(result.table("main").flat_columns) == [
        "comirec-sa+argmax",
        "comirec-sa+annealed (tau=2)",
        "comirec-sa+annealed (tau=0.5)",
        "comirec-sa+annealed (tau=10)",
        "Improv.",
    ]
