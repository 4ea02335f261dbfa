"""Reports of a study: tables, statistics and figures built only from run files.

``build_report`` reads a study folder, computes a :class:`Report` (data
frames) and writes it as LaTeX, Markdown and CSV tables, seaborn figures and
an ``index.md`` that links them.
"""

from harness.report.build import Report, ReportOptions, build_report, make_report, write_report
from harness.report.collect import StudyResults, load_study
from harness.report.tables import Cell, Row, Table

__all__ = [
    "Cell",
    "Report",
    "ReportOptions",
    "Row",
    "StudyResults",
    "Table",
    "build_report",
    "load_study",
    "make_report",
    "write_report",
]
