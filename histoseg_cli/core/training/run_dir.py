"""The run directory of train-cls: checkpoints, metrics.jsonl, curve.png, config.json.

Every file is replaced atomically, so an interrupted run leaves a consistent directory whose
last checkpoint and metrics agree, and ``--resume`` continues from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from histoseg_cli.core.atomic import write_text_atomic
from histoseg_cli.core.models.checkpoint import BEST, LAST


class RunDir:
    """Paths and writers of one training run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoint = self.root / LAST
        self.best = self.root / BEST
        self.metrics = self.root / "metrics.jsonl"
        self.curve = self.root / "curve.png"
        self.config = self.root / "config.json"

    def has_run(self) -> bool:
        return self.checkpoint.is_file()

    def read_metrics(self, up_to_epoch: int) -> list[dict[str, Any]]:
        """Rows logged for epochs ``<= up_to_epoch`` (later ones belong to a lost epoch)."""
        if not self.metrics.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line]
        return [row for row in rows if row.get("epoch", 0) <= up_to_epoch]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def write_config(self, config: dict[str, Any]) -> None:
        write_text_atomic(self.config, json.dumps(config, indent=2, default=str) + "\n")

    def write_curve(self, rows: list[dict[str, Any]]) -> None:
        """Loss (train/val), validation F1/AUC and the mu and LR schedules per epoch."""
        from histoseg_cli.core.figures import new_figure, save_figure  # matplotlib: only here

        epochs = [r["epoch"] for r in rows]
        fig = new_figure(13, 3.6)
        ax_loss, ax_val, ax_sched = fig.subplots(1, 3)
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
        vals = [r.get("val") for r in rows]
        if any(vals):
            ax_loss.plot(epochs, [v["loss"] if v else None for v in vals], "o-", label="val")
            for key in ("mean_f1", "mean_auc", "exact_match"):
                ax_val.plot(epochs, [v.get(key) if v else None for v in vals], "o-", label=key)
            ax_val.set_ylim(0, 1.02)
            ax_val.legend()
        else:
            ax_val.text(0.5, 0.5, "no validation set", ha="center", va="center")
        ax_loss.set(title="multi-label soft margin loss", xlabel="epoch")
        ax_loss.legend()
        ax_val.set(title="validation", xlabel="epoch")
        ax_sched.plot(epochs, [r["mu"] for r in rows], "o-", label="PDA mu")
        ax_lr = ax_sched.twinx()
        ax_lr.plot(epochs, [r["lr"] for r in rows], "s--", color="tab:red", label="lr")
        ax_sched.set(title="schedules (at epoch start)", xlabel="epoch", ylabel="mu")
        ax_lr.set_ylabel("backbone lr")
        fig.tight_layout()
        save_figure(fig, self.curve, dpi=90)
