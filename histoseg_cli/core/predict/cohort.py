"""The cohort summary of a folder of slides: ``summary.csv`` (one row per slide: status,
tissue area, area and fraction of tissue per class, and the ratios users otherwise compute by
hand) and ``summary.png`` (class fractions per slide as stacked bars).

Rows come from each slide's own area table (``*.areas.csv``), so a resumed run, a run whose
slides were skipped as complete, and the merge of torchrun ranks all give the same summary.
Both files are rewritten atomically as slides finish (the caller paces it): usable mid-run.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseg_cli.core.atomic import write_csv_atomic
from histoseg_cli.core.errors import render_settings

SUMMARY_CSV = "summary.csv"
SUMMARY_PNG = "summary.png"


@dataclass(frozen=True)
class Ratio:
    """``numerator / (numerator + other)`` by area, when the classes are present by name."""

    name: str
    numerator: tuple[str, ...]  # class names that count (case-insensitive)
    other: tuple[str, ...]


#: Ratios reported when the model's class names allow them (LUAD-HistoSeg, BCSS, GlaS names).
RATIOS = (
    Ratio("tumour_stroma_ratio", ("te", "tum", "tumour", "tumor"),
          ("tas", "str", "stroma")),
    Ratio("lymphocyte_tumour_ratio", ("lym", "lymphocytes", "lymphocyte"),
          ("te", "tum", "tumour", "tumor")),
)


def read_areas(path: Path) -> dict[str, float]:
    """Area in mm^2 per class from a slide's area table (background left out)."""
    with open(path, newline="") as f:
        return {row["class"]: float(row["area_mm2"] or 0.0) for row in csv.DictReader(f)
                if row["class"] != "background"}


def _pick(areas: dict[str, float], names: tuple[str, ...]) -> str | None:
    return next((c for c in areas if c.lower() in names), None)


def summary_row(slide: Path, status: str, areas: dict[str, float] | None,
                class_names: Sequence[str], error: str = "") -> dict[str, object]:
    """One slide's row: tissue mm^2, per class mm^2 and fraction of tissue, ratios."""
    row: dict[str, object] = {"slide": str(slide), "status": status,
                              "error": render_settings(error)}  # as in the manifest
    if areas is None:
        return row
    tissue = sum(areas.values())
    row["tissue_mm2"] = round(tissue, 6)
    for name in class_names:
        row[f"{name}_mm2"] = round(areas.get(name, 0.0), 6)
        row[f"{name}_fraction"] = round(areas.get(name, 0.0) / tissue, 6) if tissue else None
    for ratio in RATIOS:
        a, b = _pick(areas, ratio.numerator), _pick(areas, ratio.other)
        if a is not None and b is not None and areas[a] + areas[b] > 0:
            row[ratio.name] = round(areas[a] / (areas[a] + areas[b]), 6)
    return row


def summary_fields(class_names: Sequence[str]) -> list[str]:
    lower = {c.lower() for c in class_names}
    ratios = [r.name for r in RATIOS if lower & set(r.numerator) and lower & set(r.other)]
    per_class = [f"{c}_{what}" for c in class_names for what in ("mm2", "fraction")]
    return ["slide", "status", "tissue_mm2", *per_class, *ratios, "error"]


def write_summary(folder: Path, rows: list[dict[str, object]], class_names: Sequence[str],
                  palette: np.ndarray) -> list[Path]:
    """``summary.csv`` and ``summary.png`` in ``folder``; their paths."""
    table = write_csv_atomic(folder / SUMMARY_CSV, summary_fields(class_names), rows)
    return [table, _plot(folder / SUMMARY_PNG, rows, class_names, palette)]


def _plot(path: Path, rows: list[dict[str, object]], class_names: Sequence[str],
          palette: np.ndarray) -> Path:
    from histoseg_cli.core.figures import new_figure, save_figure  # matplotlib: only here

    shown = [r for r in rows if r.get("tissue_mm2")]
    fig = new_figure(max(4.0, 0.5 * len(shown) + 2.5), 3.6)
    ax = fig.subplots()
    bottom = np.zeros(len(shown))
    for i, name in enumerate(class_names):
        values = np.array([float(r.get(f"{name}_fraction") or 0.0) for r in shown])
        ax.bar(range(len(shown)), values, bottom=bottom, label=name,
               color=tuple(palette[i][:3] / 255.0), edgecolor="white", linewidth=0.5)
        bottom += values
    ax.set_xticks(range(len(shown)), [Path(str(r["slide"])).stem for r in shown],
                  rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1), ylabel="fraction of tissue",
           title=f"class fractions, {len(shown)} slides")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
