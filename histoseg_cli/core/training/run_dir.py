"""The run directory of a training run: checkpoints, metrics.jsonl, curve.png, config.json.

Every file is replaced atomically, so an interrupted run leaves a consistent directory whose
last checkpoint and metrics agree, and ``--resume`` continues from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoseg_cli.core.atomic import write_text_atomic
from histoseg_cli.core.models.checkpoint import BEST, LAST

if TYPE_CHECKING:
    from histoseg_cli.core.training.task import TrainTask


class RunDir:
    """Paths and writers of one training run."""

    def __init__(self, root: str | Path, task: TrainTask | None = None) -> None:
        self.root = Path(root)
        self.task = task  # what the curve shows besides the losses
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
        """Loss (train/val), the task's validation scores, and the LR (and the task's own
        schedule, e.g. PDA's mu) per epoch."""
        from histoseg_cli.core.figures import new_figure, save_figure  # matplotlib: only here

        task = self.task
        curve_keys = task.curve_keys if task else ()
        schedule_key = task.schedule_key if task else None

        epochs = [r["epoch"] for r in rows]
        fig = new_figure(13, 3.6)
        ax_loss, ax_val, ax_sched = fig.subplots(1, 3)
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
        vals = [r.get("val") for r in rows]
        if any(vals):
            ax_loss.plot(epochs, [v.get("loss") if v else None for v in vals], "o-",
                         label="val")
            for key in curve_keys:
                ax_val.plot(epochs, [v.get(key) if v else None for v in vals], "o-", label=key)
            ax_val.set_ylim(0, 1.02)
            ax_val.legend()
        else:
            ax_val.text(0.5, 0.5, "no validation set", ha="center", va="center")
        ax_loss.set(title=task.loss_name if task else "loss", xlabel="epoch")
        ax_loss.legend()
        ax_val.set(title="validation", xlabel="epoch")
        ax_sched.plot(epochs, [r["lr"] for r in rows], "s--", color="tab:red", label="lr")
        ax_sched.set(title="schedules (at epoch start)", xlabel="epoch", ylabel="backbone lr")
        if schedule_key:
            ax_mu = ax_sched.twinx()
            ax_mu.plot(epochs, [r.get(schedule_key) for r in rows], "o-", label=schedule_key)
            ax_mu.set_ylabel(schedule_key)
        fig.tight_layout()
        save_figure(fig, self.curve, dpi=90)
