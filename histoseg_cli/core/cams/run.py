"""``histoseg cams`` core: a patches artifact + a classifier -> a linked pseudo-masks artifact.

Batches are committed as they finish to a resumable hidden file, so an interrupted run
continues after its last committed batch when rerun with the same classifier, input and
settings (anything else starts over). Metrics and the gallery are computed from what is in
the file at the end, so a resumed run reports the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from histoseg_cli.core.atomic import check_writable
from histoseg_cli.core.provenance import Provenance, check_kept
from histoseg_cli.core.data.format import ArtifactMeta, InputLink
from histoseg_cli.core.data.reader import Artifact, recorded_provenance
from histoseg_cli.core.data.writer import ArtifactWriter, ItemSpec
from histoseg_cli.core.cams.gallery import write_gallery
from histoseg_cli.core.cams.gradcam import CAM_METHODS, gradcam
from histoseg_cli.core.cams.metrics import LayerMetrics
from histoseg_cli.core.cams.model import CamModel, load_cam_model
from histoseg_cli.core.cams.background import BACKGROUND_RULES, BackgroundConfig, background_mask
from histoseg_cli.core.cams.pseudo import PseudoMasks, pseudo_masks
from histoseg_cli.core.cams.tta import TTA_VIEWS, averaged_maps
from histoseg_cli.core.errors import InputError, UsageError
from histoseg_cli.core.imageio import save_palette_png
from histoseg_cli.core.defaults import PRECISIONS, WHITE_THRESHOLD, check_choice
from histoseg_cli.core.device import resolve_device
from histoseg_cli.core.parallel import ordered_map
from histoseg_cli.core.progress import SILENT, Reporter

KIND = "pseudo-masks"


@dataclass(frozen=True)
class CamsConfig:
    """Settings of a ``cams`` run; ``background=None`` takes the rule the data records."""

    batch_size: int = 8
    background: str | None = None  # a key of BACKGROUND_RULES
    threshold: float = WHITE_THRESHOLD
    min_size: int = 50
    save_cams: bool = False
    png_dir: Path | None = None
    gallery: int = 8  # patches in the gallery PNG; 0 for none
    seed: int = 0
    vectorize: bool = False  # one vmapped backward for all classes instead of one per class
    tta: str = "flips"  # a key of TTA_VIEWS: maps averaged over these views of each patch
    cam: str = "layercam"  # a key of CAM_METHODS: how gradients weight the activations
    precision: str = "auto"  # autocast inside the classifier: auto (bf16 on CUDA), fp32, bf16
    overwrite: bool = False  # replace a complete output made by another model or settings

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError("must be at least 1", setting="batch_size")
        if self.tta not in TTA_VIEWS:
            raise UsageError(f"choose one of {', '.join(TTA_VIEWS)}", setting="tta")
        if self.cam not in CAM_METHODS:
            raise UsageError(f"choose one of {', '.join(CAM_METHODS)}", setting="cam")
        check_choice(self.precision, PRECISIONS, "precision")


@dataclass
class CamsSummary:
    """What a run produced, for the CLI's result line / JSON."""

    output: Path
    num_patches: int
    resumed_at: int
    layers: list[str]
    background: dict[str, object]
    device: str
    patches_per_s: float
    gallery: Path | None = None
    png_dir: Path | None = None
    metrics: dict[str, dict[str, object]] | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "output": str(self.output), "num_patches": self.num_patches,
            "resumed_at": self.resumed_at, "layers": self.layers,
            "background": self.background, "device": self.device,
            "patches_per_s": round(self.patches_per_s, 3),
            "gallery": None if self.gallery is None else str(self.gallery),
            "png_dir": None if self.png_dir is None else str(self.png_dir),
            "metrics": self.metrics,
        }


def compute_batch(model: CamModel, patches: np.ndarray, labels: np.ndarray,
                  background: np.ndarray, vectorize: bool = False, tta: str = "none",
                  cam: str = "gradcam") -> PseudoMasks:
    """CAMs and pseudo masks of one batch of (B, H, W, 3) uint8 patches with (B, C) labels
    and (B, H, W) bool background (from :func:`background_mask`); raw maps by ``cam``
    (Grad-CAM or Layer-CAM) averaged over the ``tta`` views of each patch. The defaults are
    the reference's single Grad-CAM pass; :class:`CamsConfig` holds the command's."""
    device = model.device

    def maps_of(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with model.autocast():
            return gradcam(model.model, x, vectorize=vectorize, method=cam)[1]

    maps = averaged_maps(maps_of, model.inputs(patches), TTA_VIEWS[tta])
    bg = torch.from_numpy(background).to(device)
    return pseudo_masks(maps, torch.from_numpy(np.asarray(labels)).to(device), bg,
                        patches.shape[1])


def resolve_background(config: CamsConfig, source: Artifact, model: CamModel
                       ) -> tuple[BackgroundConfig, str]:
    """The background rule and where it came from: option > input artifact > classifier."""
    for rule, origin in ((config.background, "option"),
                         (source.meta.extra.get("background"), "input artifact"),
                         (model.background, "classifier"),
                         ("none", "default")):
        if rule is not None:
            if rule not in BACKGROUND_RULES:
                raise UsageError(f"unknown background rule '{rule}' ({origin}); choose one of "
                                 f"{', '.join(BACKGROUND_RULES)}")
            return BackgroundConfig(rule, config.threshold, config.min_size), origin
    raise AssertionError("unreachable: the default rule is always set")


def gallery_path(output: Path) -> Path:
    """Where the gallery of ``pseudo.h5`` goes: ``pseudo.gallery.png`` beside it."""
    return output.with_name(f"{output.stem}.gallery.png")


def _check_input(source: Artifact, model: CamModel) -> np.ndarray:
    if source.kind != "patches":
        raise InputError(source.path, f"is a '{source.kind}' artifact; expected a patches "
                         "artifact (from histoseg tile)")
    if len(source) == 0:
        raise InputError(source.path, "holds no patches")
    if source.class_names != model.class_names:
        raise InputError(source.path, f"classes {source.class_names} differ from the "
                         f"classifier's {model.class_names}")
    return source.labels()


def _write_pngs(png_dir: Path, layers: list[str], names: list[str], masks: np.ndarray,
                palette: np.ndarray) -> None:
    for j, layer in enumerate(layers):
        folder = png_dir / layer
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in zip(names, masks[:, j]):
            save_palette_png(folder / f"{name.replace('/', '_')}.png", mask, palette)


def generate_pseudo_masks(model: CamModel, input_path: Path, output: Path,
                          config: CamsConfig = CamsConfig(), reporter: Reporter = SILENT
                          ) -> CamsSummary:
    """Write the pseudo-masks artifact ``output`` for the patches artifact ``input_path``."""
    if Path(output).resolve() == Path(input_path).resolve():
        raise UsageError(f"{output} is the input artifact; write the pseudo masks elsewhere",
                         "output")
    with Artifact(input_path) as source:
        return _generate(model, source, Path(output), config, reporter)


def _generate(model: CamModel, source: Artifact, output: Path, config: CamsConfig,
              reporter: Reporter) -> CamsSummary:
    labels = _check_input(source, model)
    background, origin = resolve_background(config, source, model)
    names = source.names()
    n, size, c = len(names), source.meta.patch_size, len(model.class_names)
    layers = list(model.layers)
    palette = source.meta.resolved_palette()
    weights, link = model.fingerprint(), InputLink.to(source)  # each computed once
    made = Provenance("cams", {"classifier": weights}, {
        "input_names_sha256": link.names_sha256, "layers": layers,
        "background": background.as_dict(), "tta": config.tta, "cam": config.cam,
        "precision": config.precision})
    if output.is_file() and not config.overwrite:
        check_kept([(output, recorded_provenance(output))], made)
    meta = ArtifactMeta(
        class_names=list(model.class_names), patch_size=size, palette=palette,
        mpp=source.meta.mpp, magnification=source.meta.magnification, source=str(source.path),
        created_by="cams", kind=KIND, link=link,
        extra={"classifier": model.source, "classifier_sha256": weights,
               "layers": layers, "background": background.as_dict(), "tta": config.tta,
               "cam": config.cam,
               "precision": config.precision, "provenance": made.as_dict()},
    )
    specs = {"pseudo_masks": ItemSpec((len(layers), size, size), "uint8")}
    if config.save_cams:
        specs["cams"] = ItemSpec((len(layers), c, size, size), "float16")
    metrics = LayerMetrics(layers, model.class_names) if source.has_masks else None
    patches, truth = source.dataset("patches"), source.file.get("masks")
    started = time.perf_counter()
    with ArtifactWriter(output, meta, extra_datasets=specs, resumable=True) as writer:
        start = writer.rows_done
        for s in range(0, start, 256):  # rows kept from an interrupted run count too
            e = min(s + 256, start)
            kept = writer.committed("pseudo_masks", s, e)
            if metrics is not None:
                metrics.update(kept, truth[s:e])
            if config.png_dir is not None:
                _write_pngs(config.png_dir, layers, names[s:e], kept, palette)
        def read(bounds: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray]:
            """Decode a batch and find its background: CPU work, overlapped with Grad-CAM."""
            s, e = bounds
            batch = patches[s:e]
            return s, e, batch, background_mask(batch, background)

        batches = [(s, min(s + config.batch_size, n)) for s in range(start, n, config.batch_size)]
        with reporter.bar("cams", unit="patches") as bar, ThreadPoolExecutor(1) as pool:
            task = bar.add_task("cams", total=n, completed=start)
            for s, e, batch, bg in ordered_map(pool, read, batches, ahead=2):
                result = compute_batch(model, batch, labels[s:e], bg, config.vectorize,
                                       config.tta, config.cam)
                masks = result.masks.cpu().numpy()
                rows = {"pseudo_masks": masks}
                if config.save_cams:
                    rows["cams"] = result.cams.to(torch.float16).cpu().numpy()
                writer.append_rows(names[s:e], **rows)
                if metrics is not None:
                    metrics.update(masks, truth[s:e])
                if config.png_dir is not None:
                    _write_pngs(config.png_dir, layers, names[s:e], masks, palette)
                bar.advance(task, e - s)
        attrs: dict[str, object] = {"layers": np.array(layers, dtype=object)}
        if metrics is not None:
            scores = metrics.scores()
            attrs["miou"] = np.array([scores[l].miou for l in layers])
            attrs["iou"] = np.stack([scores[l].iou for l in layers])
            attrs["metrics"] = json.dumps(metrics.as_dict())
        writer.set_attrs("pseudo_masks", **attrs)
    elapsed = time.perf_counter() - started
    if metrics is not None and reporter.enabled:
        reporter.console.print(metrics.table())
    summary = CamsSummary(
        output=output, num_patches=n, resumed_at=start, layers=layers,
        background={**background.as_dict(), "from": origin}, device=str(model.device),
        patches_per_s=(n - start) / elapsed if elapsed > 0 else 0.0, png_dir=config.png_dir,
        metrics=None if metrics is None else metrics.as_dict(),
    )
    if config.gallery > 0:
        summary.gallery = _gallery(model, source, output, config, background, labels, names,
                                   layers)
    return summary


def _gallery(model: CamModel, source: Artifact, output: Path, config: CamsConfig,
             background: BackgroundConfig, labels: np.ndarray, names: list[str],
             layers: list[str]) -> Path:
    """Recompute a few random patches (cheap, and independent of how the run was resumed)."""
    n = len(source)
    rng = np.random.default_rng(config.seed)
    index = np.sort(rng.choice(n, size=min(config.gallery, n), replace=False))
    images = source.dataset("patches")[index]
    result = compute_batch(model, images, labels[index], background_mask(images, background),
                           config.vectorize, config.tta, config.cam)
    return write_gallery(
        gallery_path(output), images, result.cams.cpu().numpy(), result.masks.cpu().numpy(),
        [names[i] for i in index], labels[index], layers, model.class_names,
        source.meta.resolved_palette(),
        truth=source.dataset("masks")[index] if source.has_masks else None,
    )


@dataclass
class CamsRequest:
    """Everything ``cams`` was asked: a train-cls run, a patches artifact, where to write."""

    classifier: Path  # checkpoint or run directory
    input: Path  # patches artifact (a dataset folder is imported by the caller)
    output: Path
    config: CamsConfig = field(default_factory=CamsConfig)
    device: str = "auto"


def check_places(classifier: Path, output: Path) -> None:
    """The classifier exists and ``output`` can be written: checked before anything is read
    or imported (a command that imports a dataset folder first calls this itself)."""
    if not classifier.exists():
        raise InputError(classifier, "no such file or folder (expected a train-cls run "
                         "directory or checkpoint)")
    check_writable(output)


def run_cams(req: CamsRequest, reporter: Reporter = SILENT) -> CamsSummary:
    """Load the train-cls checkpoint (file or run directory) and generate pseudo masks."""
    check_places(req.classifier, req.output)
    Artifact(req.input).close()  # fail on bad input before loading a large model
    model = load_cam_model(req.classifier, resolve_device(req.device), req.config.precision)
    return generate_pseudo_masks(model, req.input, req.output, req.config, reporter)
