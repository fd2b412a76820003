"""A patches artifact -> a predictions artifact (one label map and gate vector per patch).

The predictions artifact links to the patches it was computed from, keeps their names (and
coordinates), and is written resumably: rerunning an interrupted command continues after its
last finished batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoseg_cli.core.data.format import ArtifactMeta, InputLink
from histoseg_cli.core.data.kinds import PREDICTIONS
from histoseg_cli.core.data.reader import Artifact, recorded_provenance
from histoseg_cli.core.data.writer import ArtifactWriter, ItemSpec
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.parallel import lagged
from histoseg_cli.core.predict.predictor import Predictor


@dataclass(frozen=True)
class ArtifactTargets:
    """Where one patches artifact's predictions go in a folder run. The artifact appears
    under its name only when complete (it is written under a hidden partial name)."""

    output: Path

    def complete(self) -> bool:
        return self.output.is_file()

    def recorded(self) -> dict[str, Any] | None:
        """The provenance the predictions artifact records."""
        return recorded_provenance(self.output)


def _check(source: Artifact, predictor: Predictor) -> None:
    if "patches" not in source.datasets:
        raise InputError(source.path, f"is a {source.kind} artifact without patches; expected "
                         "a patches artifact (from histoseg tile)")
    if source.meta.patch_size != predictor.patch_size:
        raise InputError(source.path, f"has {source.meta.patch_size} px patches; the segmenter "
                         f"was trained on {predictor.patch_size} px (tile it at that size)")
    if source.class_names and source.class_names != predictor.class_names:
        raise InputError(source.path, f"classes {source.class_names} differ from the "
                         f"segmenter's {predictor.class_names}")


def predict_artifact(input_path: Path, output: Path, predictor: Predictor,
                     progress: Callable[..., None] | None = None) -> dict[str, object]:
    """Write the predictions artifact ``output`` for the patches artifact ``input_path``;
    ``progress(done, total)`` once (a resumed run starts at its rows done), then
    ``progress(rows)`` per batch written."""
    if output.resolve() == input_path.resolve():
        raise UsageError(f"{output} is the input artifact; write the predictions elsewhere",
                         setting="output")
    with Artifact(input_path) as source:
        _check(source, predictor)
        names = source.names()
        n, p, c = len(names), predictor.patch_size, predictor.num_classes
        meta = ArtifactMeta(
            class_names=predictor.class_names, patch_size=p, palette=predictor.palette,
            mpp=source.meta.mpp, magnification=source.meta.magnification,
            source=str(source.path), created_by="predict", kind=PREDICTIONS.name,
            link=InputLink.to(source), extra=predictor.describe())
        specs = {"predictions": ItemSpec((p, p), "uint8")}
        if predictor.gate_source != "none":
            specs["gate_probs"] = ItemSpec((c,), "float32")
        coords = source.has_coords
        patches = source.dataset("patches")
        started = time.perf_counter()
        with ArtifactWriter(output, meta, coords=coords, extra_datasets=specs,
                            resumable=True) as writer:
            start = writer.rows_done
            if progress is not None:
                progress(start, n)
            read = lambda bounds: patches[bounds[0]:bounds[1]]  # noqa: E731
            queued = ((s, e, out.to_host()) for s, e, out in predictor.map(read, start, n))
            for _, finished in lagged(queued):  # batch k queued before k - 1 is written
                if finished is None:
                    continue
                s, e, host = finished[0], finished[1], finished[2].wait()
                rows = {"predictions": host.labels.numpy()}
                if "gate_probs" in specs:
                    rows["gate_probs"] = host.gate.numpy()
                if coords:
                    rows["coords"] = source.dataset("coords")[s:e]
                writer.append_rows(names[s:e], **rows)
                if progress is not None:
                    progress(e - s)
        seconds = time.perf_counter() - started
    return {"input": str(input_path), "output": str(output), "tiles": n, "resumed_at": start,
            "seconds": round(seconds, 3),
            "patches_per_s": round((n - start) / seconds, 2) if seconds > 0 else None}
