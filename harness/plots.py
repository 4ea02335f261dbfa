"""Seaborn figures of a study, built only from its run files, saved as PNG and PDF.

Every function reads what it needs from :class:`~harness.report.collect.StudyResults`
(or the study folder for Optuna plots), draws with the non-interactive Agg
backend and returns the :class:`Figure` records that ``index.md`` lists. A
figure without data is left out with a logged note.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from harness.report.collect import StudyResults, load_per_user  # noqa: E402
from harness.report.text import count_noun  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 150
CURVE_COLUMNS = ("valid_recall@20", "selection_entropy")


@dataclass(frozen=True)
class Figure:
    """A saved figure.

    Attributes:
        stem: File name without extension.
        description: One line for ``index.md`` on what the figure shows.
        files: The PNG and PDF files.
    """

    stem: str
    description: str
    files: tuple[Path, ...]


def _save(fig: plt.Figure, folder: Path, stem: str, description: str) -> Figure:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for suffix in ("png", "pdf"):
        path = folder / f"{stem}.{suffix}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        files.append(path)
    plt.close(fig)
    return Figure(stem=stem, description=description, files=tuple(files))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _share_columns(columns: pd.Index | list[str]) -> list[str]:
    shares = [
        c for c in columns if isinstance(c, str) and c.startswith("share_") and c[6:].isdigit()
    ]
    return sorted(shares, key=lambda c: int(c[6:]))


def _share_columns_of(path: Path) -> list[str]:
    """Read the share column names of a run's per-user file from its schema."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path / "per_user.parquet").names
    except (OSError, ValueError):
        return []
    return _share_columns(names)


def normalized_entropy(shares: np.ndarray) -> np.ndarray:
    """Return ``H(p) / log K`` for each row of a ``(U, K)`` share matrix (``0 log 0 = 0``).

    Rows that do not sum to one (a user with no scored items) are normalised
    first; an all-zero row gets ``nan``. ``K = 1`` gives ``nan`` for every row.
    """
    shares = np.asarray(shares, dtype=np.float64)
    k = shares.shape[1]
    totals = shares.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = shares / totals  # (U, K)
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = terms.sum(axis=1)
    entropy[totals[:, 0] <= 0] = np.nan
    return entropy / math.log(k) if k > 1 else np.full(shares.shape[0], np.nan)


def interest_share_matrix(frame: pd.DataFrame, users: np.ndarray, shares: list[str]) -> np.ndarray:
    """Build the ``(U, K)`` matrix of one heat-map panel.

    Args:
        frame: Per-user values of one run with ``user_key`` and the share columns.
        users: User keys to show.
        shares: Share column names (``share_0`` ...).

    Returns:
        The users' shares with interests sorted by mean share (descending) and
        users sorted by their dominant interest, then by its share (descending).
    """
    matrix = frame.set_index("user_key").loc[users, shares].to_numpy(dtype=float)  # (U, K)
    # Interest indices are arbitrary per run, so order them by overall share
    # to make panels comparable; users are grouped by their dominant interest.
    matrix = matrix[:, np.argsort(-matrix.mean(axis=0), kind="stable")]
    dominant = matrix.argmax(axis=1)
    order = np.lexsort((-matrix.max(axis=1), dominant))
    return matrix[order]


def interest_heatmaps(
    results: StudyResults, folder: Path, order: list[str], *, n_users: int, seed: int
) -> list[Figure]:
    """Draw, per data set, a panel per method of users x interests coloured by top-K share.

    Each panel uses the method's run with the lowest seed. The same users,
    drawn with ``numpy.random.default_rng(seed)`` among the test users every
    panel has, appear in every panel. Methods with one interest are left out.

    Args:
        results: The study's finished runs.
        folder: Output folder.
        order: Method labels in table order, the order of the panels.
        n_users: Users to show (all when fewer).
        seed: Seed of the user sample.
    """
    figures = []
    for dataset in results.datasets:
        runs = results.runs[results.runs["dataset"] == dataset].sort_values("seed", kind="stable")
        first = runs.drop_duplicates("label").set_index("label")
        first = first.loc[[label for label in order if label in first.index]].reset_index()
        panels: list[tuple[str, pd.DataFrame, list[str]]] = []
        for label, path in zip(first["label"], first["path"], strict=True):
            shares = _share_columns_of(path)
            if len(shares) < 2:
                continue
            frame = load_per_user([path], shares)
            if not frame.empty:
                panels.append((label, frame, shares))
        if not panels:
            logger.info("no per-user interest shares with K >= 2 for %s; no heat-map", dataset)
            continue

        common = panels[0][1]["user_key"]
        for _, frame, _ in panels[1:]:
            common = common[common.isin(frame["user_key"])]
        common = np.sort(pd.unique(common))
        rng = np.random.default_rng(seed)
        users = (
            rng.choice(common, size=min(n_users, common.size), replace=False)
            if common.size
            else common
        )

        n_cols = min(4, len(panels))
        n_rows = math.ceil(len(panels) / n_cols)
        fig, axes = plt.subplots(
            n_rows,
            n_cols,
            figsize=(2.6 * n_cols + 1.0, 3.4 * n_rows),
            squeeze=False,
            layout="constrained",
        )
        for ax, (label, frame, shares) in zip(axes.flat, panels, strict=False):
            matrix = interest_share_matrix(frame, users, shares)
            sns.heatmap(
                matrix,
                ax=ax,
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                cbar=False,
                xticklabels=True,
                yticklabels=False,
            )
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("interest (by mean share)")
            ax.set_ylabel(count_noun(len(users), "user"))
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap="viridis")
        fig.colorbar(mappable, ax=axes, shrink=0.8, label="share of top-K items")
        fig.suptitle(f"{dataset}: interest shares of top-K items")
        figures.append(
            _save(
                fig,
                folder,
                f"heatmap_{_slug(dataset)}",
                f"Interest-share heat-maps on {dataset}: rows are {count_noun(len(users), 'sampled test user')}, columns the "
                "interests sorted by mean share, colour the share of the user's top-K list from that interest.",
            )
        )
    return figures


def entropy_plot(results: StudyResults, folder: Path, order: list[str]) -> list[Figure]:
    """Draw per-user normalised entropy of top-K interest shares by method, one panel per data set.

    Args:
        results: The study's finished runs.
        folder: Output folder.
        order: Method labels in table order.
    """
    frames = []
    for (dataset, label), runs in results.runs.groupby(["dataset", "label"], sort=False):
        paths = list(runs["path"])
        shares = _share_columns_of(paths[0])
        if len(shares) < 2:
            continue
        values = load_per_user(paths, shares)
        if values.empty:
            continue
        entropy = normalized_entropy(values[shares].to_numpy(dtype=float))
        frames.append(pd.DataFrame({"dataset": dataset, "method": label, "entropy": entropy}))
    if not frames:
        logger.info("no per-user interest shares with K >= 2; no entropy plot")
        return []
    data = pd.concat(frames, ignore_index=True).dropna(subset=["entropy"])
    methods = [m for m in order if m in set(data["method"])]
    grid = sns.catplot(
        data=data,
        x="method",
        y="entropy",
        col="dataset",
        kind="box",
        order=methods,
        showfliers=False,
        height=3.6,
        aspect=max(1.0, 0.35 * len(methods)),
        color="#8fb3d9",
    )
    grid.set_axis_labels("", "normalised entropy H / log K")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=60)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.set_ylim(-0.02, 1.02)
    return [
        _save(
            grid.figure,
            folder,
            "entropy_by_method",
            "Per-user normalised entropy of top-K interest shares by method (box: quartiles over users and "
            "seeds; 1 is a perfectly balanced user, 0 a user served by one interest).",
        )
    ]


def seed_plot(results: StudyResults, folder: Path, metric: str, order: list[str]) -> list[Figure]:
    """Draw the per-seed test values of one metric by method: a box with every seed as a point."""
    data = results.runs[["dataset", "label", "seed", metric]].dropna(subset=[metric])
    if data.empty:
        return []
    methods = [m for m in order if m in set(data["label"])]
    datasets = list(pd.unique(data["dataset"]))
    width = max(4.0, 0.45 * len(methods) + 1.5)
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(width * len(datasets), 4.0), squeeze=False, layout="constrained"
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        mine = data[data["dataset"] == dataset]
        sns.boxplot(
            data=mine, x="label", y=metric, order=methods, ax=ax, color="#dddddd", showfliers=False
        )
        sns.stripplot(
            data=mine,
            x="label",
            y=metric,
            order=methods,
            ax=ax,
            hue="seed",
            palette="deep",
            size=5,
            jitter=0.15,
        )
        ax.set_title(dataset)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=60)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.legend(title="seed", fontsize=7, title_fontsize=8, loc="best")
    return [
        _save(
            fig,
            folder,
            f"seeds_{_slug(metric)}",
            f"Test {metric} per seed and method: box over seeds, one point per seed (coloured by seed).",
        )
    ]


def _strategy_palette(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """Give each strategy (or strategy and ablation variant) its own colour, in the given order."""
    palette = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, palette, strict=True))


def learning_curves(results: StudyResults, folder: Path, order: list[str]) -> list[Figure]:
    """Draw validation Recall@20 and training selection entropy over steps.

    There is one column of panels per backbone and one row per data set and
    quantity. Within a panel each strategy (with its ablation variant, if
    any) is one line, in the same colour on every backbone. Seeds are
    aggregated into the mean line with a band of one standard deviation. A
    step that only some seeds reach (early stopping) shows the mean of those
    seeds.

    Args:
        results: The study's finished runs.
        folder: Output folder.
        order: Method labels in table order; it sets the order of the
            backbone columns and of the strategies in the legend.
    """
    frames = []
    for run in results.runs.itertuples(index=False):
        path = Path(run.path) / "curve.csv"
        if not path.is_file():
            continue
        try:
            curve = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            logger.warning(
                "skipped learning curve of run %s: cannot read %s: %s", run.run_id, path, exc
            )
            continue
        present = [c for c in CURVE_COLUMNS if c in curve.columns]
        if "step" not in curve.columns or not present:
            logger.warning(
                "skipped learning curve of run %s: %s has no step or curve columns",
                run.run_id,
                path,
            )
            continue
        long = curve.melt(
            id_vars="step", value_vars=present, var_name="quantity", value_name="value"
        )
        strategy = f"{run.strategy} ({run.variant})" if run.variant else run.strategy
        frames.append(
            long.assign(
                dataset=run.dataset,
                backbone=run.backbone,
                strategy=strategy,
                method=run.label,
                seed=run.seed,
            )
        )
    if not frames:
        logger.info("no curve.csv files; no learning curves")
        return []
    data = pd.concat(frames, ignore_index=True)

    # Backbones and strategies in the order of the table columns.
    ordered = [m for m in order if m in set(data["method"])]
    ordered += sorted(set(data["method"]) - set(ordered))
    firsts = data.drop_duplicates("method").set_index("method").loc[ordered]
    backbones = list(dict.fromkeys(firsts["backbone"]))
    strategies = list(dict.fromkeys(firsts["strategy"]))
    palette = _strategy_palette(strategies)
    panel_rows = [
        (dataset, quantity)
        for dataset in results.datasets
        for quantity in CURVE_COLUMNS
        if ((data["dataset"] == dataset) & (data["quantity"] == quantity)).any()
    ]

    fig, axes = plt.subplots(
        len(panel_rows),
        len(backbones),
        figsize=(3.6 * len(backbones) + 1.8, 2.8 * len(panel_rows)),
        squeeze=False,
        sharey="row",
        layout="constrained",
    )
    for i, (dataset, quantity) in enumerate(panel_rows):
        for j, backbone in enumerate(backbones):
            ax = axes[i, j]
            mine = data[
                (data["dataset"] == dataset)
                & (data["quantity"] == quantity)
                & (data["backbone"] == backbone)
            ]
            if not mine.empty:
                sns.lineplot(
                    data=mine,
                    x="step",
                    y="value",
                    hue="strategy",
                    hue_order=[s for s in strategies if s in set(mine["strategy"])],
                    palette=palette,
                    errorbar="sd",
                    ax=ax,
                    legend=False,
                )
            ax.set_title(f"{dataset}, {backbone}", fontsize=9)
            ax.set_xlabel("step" if i == len(panel_rows) - 1 else "")
            ax.set_ylabel(quantity if j == 0 else "")
    handles = [Line2D([], [], color=palette[name], label=name) for name in strategies]
    fig.legend(handles=handles, title="strategy", loc="outside right upper", fontsize=8)
    return [
        _save(
            fig,
            folder,
            "learning_curves",
            "Learning curves: validation Recall@20 and training selection entropy over steps, one column "
            "per backbone and one line per strategy in the same colour on every backbone (mean over "
            "seeds, band = one standard deviation).",
        )
    ]


def ablation_plot(
    data: pd.DataFrame, folder: Path, factor: str, baselines: pd.DataFrame | None = None
) -> list[Figure]:
    """Draw each metric against the ablation factor: mean over seeds with its t-based CI band.

    Args:
        data: The ablation table's data (``dataset``, ``metric``, ``method``,
            ``value``, ``mean``, ``ci_low``, ``ci_high``).
        folder: Output folder.
        factor: The factor's dotted name, for the axis label.
        baselines: Methods without the factor (``dataset``, ``metric``,
            ``method``, ``mean``), drawn as dashed horizontal lines.
    """
    if data.empty:
        return []
    numeric = pd.to_numeric(data["value"], errors="coerce")
    categorical = numeric.isna().any()
    values = list(pd.unique(data["value"]))
    x = data["value"].map({v: i for i, v in enumerate(values)}) if categorical else numeric
    data = data.assign(x=x.astype(float))
    datasets = list(pd.unique(data["dataset"]))
    metrics = list(pd.unique(data["metric"]))
    fig, axes = plt.subplots(
        len(metrics),
        len(datasets),
        figsize=(4.2 * len(datasets), 3.0 * len(metrics)),
        squeeze=False,
        layout="constrained",
    )
    palette = dict(
        zip(
            pd.unique(data["method"]),
            sns.color_palette("deep", data["method"].nunique()),
            strict=True,
        )
    )
    for i, metric in enumerate(metrics):
        for j, dataset in enumerate(datasets):
            ax = axes[i, j]
            mine = data[(data["metric"] == metric) & (data["dataset"] == dataset)].sort_values("x")
            sns.lineplot(
                data=mine,
                x="x",
                y="mean",
                hue="method",
                palette=palette,
                marker="o",
                ax=ax,
                errorbar=None,
            )
            for method, line in mine.groupby("method", sort=False):
                ax.fill_between(
                    line["x"],
                    line["ci_low"],
                    line["ci_high"],
                    color=palette[method],
                    alpha=0.2,
                    linewidth=0,
                )
            if baselines is not None:
                flat = baselines[
                    (baselines["metric"] == metric) & (baselines["dataset"] == dataset)
                ]
                for row in flat.itertuples(index=False):
                    ax.axhline(row.mean, linestyle="--", color="0.4", linewidth=1, label=row.method)
                ax.legend(fontsize=7)
            if categorical:
                ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlabel(factor)
            ax.set_ylabel(metric)
            ax.set_title(dataset)
            if i or j:
                legend = ax.get_legend()
                if legend is not None:
                    legend.remove()
    return [
        _save(
            fig,
            folder,
            "ablation",
            f"Ablation over {factor}: each metric against the factor value, mean over seeds with the 95% "
            "t-based confidence band, one line per method. Dashed lines are methods without the factor.",
        )
    ]


def _history_axes(ax: plt.Axes, trials: pd.DataFrame, title: str, maximize: bool) -> None:
    trials = trials.sort_values("number")
    best = trials["value"].cummax() if maximize else trials["value"].cummin()
    sns.scatterplot(
        x=trials["number"], y=trials["value"], ax=ax, s=18, color="#4c72b0", label="trial"
    )
    ax.step(trials["number"], best, where="post", color="#c44e52", label="best so far")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=7)


def _optuna_storage(study_dir: Path, spec: dict[str, object]) -> object | None:
    """Open the study's Optuna storage: study.json's ``storage``, else optuna.db or optuna.journal."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    recorded = spec.get("storage")
    candidates: list[str] = []
    if isinstance(recorded, str) and recorded:
        candidates.append(recorded)
        if "://" not in recorded:
            # A relative journal path was relative to where the study ran.
            candidates.append(str(study_dir / Path(recorded).name))
    candidates += [
        f"sqlite:///{(study_dir / 'optuna.db').resolve()}",
        str(study_dir / "optuna.journal"),
    ]
    for candidate in candidates:
        if "://" in candidate:
            if (
                candidate.startswith("sqlite:///")
                and not Path(candidate[len("sqlite:///") :]).is_file()
            ):
                continue
            return optuna.storages.RDBStorage(candidate)
        if Path(candidate).is_file():
            return optuna.storages.JournalStorage(JournalFileBackend(candidate))
    return None


def _optuna_trials(
    study_dir: Path, spec: dict[str, object]
) -> list[tuple[str, pd.DataFrame, bool, object | None]]:
    """Return (name, complete trials, maximize, optuna study or None) per tuning study found.

    Optuna studies that hold no trial with parameters (such as the queues a
    grid study keeps in the same storage) are skipped.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    found: list[tuple[str, pd.DataFrame, bool, object | None]] = []
    try:
        storage = _optuna_storage(study_dir, spec)
        summaries = optuna.get_all_study_summaries(storage) if storage is not None else []
        for summary in summaries:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            if len(study.directions) != 1:
                continue
            frame = study.trials_dataframe()
            params = [c for c in frame.columns if c.startswith("params_")]
            if frame.empty or "value" not in frame.columns or not params:
                continue
            frame = frame[frame["state"] == "COMPLETE"].dropna(subset=["value"])
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            found.append((summary.study_name, frame, maximize, study))
    except (
        SQLAlchemyError,
        optuna.exceptions.OptunaError,
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
    ) as exc:
        logger.warning("cannot read the Optuna storage of %s: %s; no Optuna plots", study_dir, exc)
        return []
    if found:
        return found

    # Without a storage, fall back on the trial tables in tuning/.
    for path in sorted((study_dir / "tuning").glob("*.csv")):
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            logger.warning("cannot read %s: %s", path, exc)
            continue
        if "number" not in frame.columns and "trial" in frame.columns:
            frame = frame.rename(columns={"trial": "number"})
        if not {"number", "value"} <= set(frame.columns):
            continue
        if "state" in frame.columns:
            frame = frame[frame["state"] == "COMPLETE"]
        # One table may hold the trials of every tuned component.
        keys = [c for c in ("dataset", "backbone", "strategy") if c in frame.columns]
        groups = frame.groupby(keys, sort=True) if keys else [((path.stem,), frame)]
        for key, trials in groups:
            name = "/".join(str(k) for k in key) if len(keys) < 3 else f"{key[0]}/{key[1]}+{key[2]}"
            # NOTE: a trials CSV does not record the direction; validation metrics are maximised.
            found.append((name, trials, True, None))
    return found


def optuna_plots(study_dir: Path, spec: dict[str, object], folder: Path) -> list[Figure]:
    """Draw the optimisation history and the parameter importances of every Optuna study found.

    Studies are read from the storage that study.json records, else from
    ``optuna.db`` (SQLite) or ``optuna.journal`` in the study folder. Without
    a storage, the history comes from trial tables ``tuning/*.csv`` with
    ``value`` and ``number`` (or ``trial``) columns. Such a table is split by
    its ``dataset``, ``backbone`` and ``strategy`` columns when it has them. Importances are Optuna's PED-ANOVA
    estimates (``PedAnovaImportanceEvaluator``, deterministic) and need at
    least two complete trials. The default fANOVA evaluator is not used
    because in Optuna 5.1 it needs scikit-learn, which this project does
    not install.

    Args:
        study_dir: The study folder.
        spec: Contents of its study.json.
        folder: Output folder.
    """
    import optuna

    studies = [s for s in _optuna_trials(study_dir, spec) if not s[1].empty]
    if not studies:
        return []
    figures = []
    n_cols = min(3, len(studies))
    n_rows = math.ceil(len(studies) / n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.2 * n_cols, 3.2 * n_rows), squeeze=False, layout="constrained"
    )
    for ax, (name, trials, maximize, _) in zip(axes.flat, studies, strict=False):
        _history_axes(ax, trials, name, maximize)
    for ax in list(axes.flat)[len(studies) :]:
        ax.set_visible(False)
    figures.append(
        _save(
            fig,
            folder,
            "optuna_history",
            "Optuna optimisation history: objective per trial and the best so far, per study.",
        )
    )

    importances = []
    for name, trials, _, study in studies:
        if study is None or len(trials) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                scores = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
                )
        except (ValueError, RuntimeError) as exc:
            logger.info("no parameter importances for Optuna study %s: %s", name, exc)
            continue
        importances.extend(
            {"study": name, "parameter": p, "importance": v} for p, v in scores.items()
        )
    if importances:
        data = pd.DataFrame(importances)
        grid = sns.catplot(
            data=data,
            x="importance",
            y="parameter",
            col="study",
            col_wrap=min(3, data["study"].nunique()),
            kind="bar",
            sharey=False,
            height=3.2,
            aspect=1.3,
            color="#55a868",
        )
        grid.set_titles("{col_name}")
        figures.append(
            _save(
                grid.figure,
                folder,
                "optuna_importance",
                "Optuna hyperparameter importances (PED-ANOVA) per study: how much each parameter's "
                "distribution in the best trials differs from the whole search space, normalised to sum to 1.",
            )
        )
    return figures
