"""Render :class:`~harness.report.tables.Table` objects as LaTeX, Markdown or CSV.

LaTeX output is a ``table`` float with a booktabs ``tabular`` (``\\toprule``,
``\\midrule``, ``\\bottomrule``, ``\\cmidrule`` under spanning headers).
Tables with many rows become a ``longtable`` so that they can break across pages.
:func:`latex_document` wraps table files in a document that compiles on its
own with pdflatex.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.report.tables import Cell, Table

# A float cannot break across pages, so tables with more body rows than fit
# on one page use longtable (and are never scaled).
LONGTABLE_ROWS = 40
# Wider tables are scaled down to the text width.
SCALE_COLUMNS = 7

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "±": r"$\pm$",
    "†": r"$^{\dagger}$",
    "‡": r"$^{\ddagger}$",
}
_LATEX_MARKS = {"better": r"$^{\dagger}$", "worse": r"$^{\ddagger}$"}
_MARKDOWN_MARKS = {"better": "<sup>†</sup>", "worse": "<sup>‡</sup>"}


def escape_latex(text: str) -> str:
    """Escape LaTeX's special characters and map the en dash, plus-minus and daggers to commands."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _latex_cell(cell: Cell) -> str:
    text = escape_latex(cell.text)
    if cell.bold:
        text = rf"\textbf{{{text}}}"
    if cell.underline:
        text = rf"\underline{{{text}}}"
    text += _LATEX_MARKS.get(cell.mark, "")
    if cell.spread:
        text += rf"{{\scriptsize$\pm${escape_latex(cell.spread)}}}"
    return text


def _latex_header(table: Table) -> list[str]:
    """Return the header lines: an optional spanning row with its cmidrules, then the column names."""
    lines = []
    n_stub = len(table.stub)
    if table.groups:
        parts = [""] * n_stub
        rules = []
        start = n_stub + 1
        for text, span in table.groups:
            end = start + span - 1
            if text:
                parts.append(rf"\multicolumn{{{span}}}{{c}}{{{escape_latex(text)}}}")
                rules.append(rf"\cmidrule(lr){{{start}-{end}}}")
            else:
                parts.extend([""] * span)
            start = end + 1
        lines.append(" & ".join(parts) + r" \\")
        if rules:
            lines.append(" ".join(rules))
    names = [escape_latex(h) for h in (*table.stub, *table.columns)]
    lines.append(" & ".join(names) + r" \\")
    return lines


def _latex_body(table: Table) -> list[str]:
    lines = []
    for row in table.rows:
        if row.new_block:
            lines.append(r"\midrule")
        parts = [escape_latex(label) for label in row.labels] + [_latex_cell(c) for c in row.cells]
        lines.append(" & ".join(parts) + r" \\")
    return lines


def to_latex(table: Table) -> str:
    """Render a table as a LaTeX ``table`` float (or ``longtable``) with booktabs rules.

    The output needs ``booktabs``, ``graphicx`` and ``longtable`` in the preamble.
    """
    spec = "l" * len(table.stub) + "c" * len(table.columns)
    label = rf"\label{{tab:{table.name}}}"
    caption = rf"\caption{{{escape_latex(table.title)}}}"
    notes = " ".join(escape_latex(note) for note in table.notes)
    header = _latex_header(table)
    body = _latex_body(table)

    if len(table.rows) > LONGTABLE_ROWS:
        lines = [
            r"{\small",
            rf"\begin{{longtable}}{{{spec}}}",
            caption + label + r" \\",
            r"\toprule",
            *header,
            r"\midrule",
            r"\endfirsthead",
            r"\toprule",
            *header,
            r"\midrule",
            r"\endhead",
            r"\bottomrule",
            r"\endfoot",
            r"\bottomrule",
            r"\endlastfoot",
            *body,
            r"\end{longtable}",
        ]
        # Notes follow the table as a paragraph: a multicolumn cell this wide
        # would stretch the last column.
        if notes:
            lines += [rf"\par\noindent{{\footnotesize {notes}}}\par"]
        lines += ["}"]
        return "\n".join(lines) + "\n"

    tabular = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        *header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if len(table.columns) + len(table.stub) > SCALE_COLUMNS:
        tabular = [r"\resizebox{\linewidth}{!}{%", *tabular, "}"]
    lines = [r"\begin{table}[htbp]", r"\centering", caption, label, r"\small", *tabular]
    if notes:
        lines += [r"\par\smallskip", rf"\parbox{{\linewidth}}{{\footnotesize {notes}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def latex_document(table_files: Sequence[str], title: str) -> str:
    """Build a document that ``\\input``s table files from its own folder and compiles with pdflatex.

    Args:
        table_files: File names of table fragments written by :func:`to_latex`.
        title: Heading of the document.
    """
    inputs = [rf"\input{{{Path(name).name}}}" for name in table_files]
    return "\n".join(
        [
            r"\documentclass[10pt]{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage[utf8]{inputenc}",
            r"\usepackage[landscape,margin=1.5cm]{geometry}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\usepackage{longtable}",
            r"\begin{document}",
            rf"\section*{{{escape_latex(title)}}}",
            *inputs,
            r"\end{document}",
            "",
        ]
    )


def _markdown_text(text: str) -> str:
    return text.replace("|", r"\|")


def _markdown_cell(cell: Cell) -> str:
    text = _markdown_text(cell.text)
    if cell.bold:
        text = f"**{text}**"
    if cell.underline:
        text = f"<u>{text}</u>"
    text += _MARKDOWN_MARKS.get(cell.mark, "")
    if cell.spread:
        text += f" ± {_markdown_text(cell.spread)}"
    return text


def to_markdown(table: Table) -> str:
    """Render a table as a GitHub-flavoured Markdown pipe table with its caption and notes.

    Spanning headers are folded into the column names (``flat_columns``);
    underline is written as ``<u>`` HTML, which Markdown has no syntax for.
    """
    header = [_markdown_text(h) for h in (*table.stub, *table.flat_columns)]
    align = [":--"] * len(table.stub) + [":-:"] * len(table.flat_columns)
    lines = [
        f"**{_markdown_text(table.title)}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
    ]
    for row in table.rows:
        parts = [_markdown_text(label) for label in row.labels] + [
            _markdown_cell(c) for c in row.cells
        ]
        lines.append("| " + " | ".join(parts) + " |")
    if table.notes:
        lines += ["", *(f"{note}  " for note in table.notes)]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(table: Table) -> str:
    """Render a table's unformatted numbers (its tidy ``data``) as CSV."""
    return table.data.to_csv(index=False)
