"""What a ``predict`` INPUT is: a patches artifact, an image, a slide, or a folder of any.

Plain PNG/JPEG/BMP files are images; scanner formats (svs, ndpi, mrxs, ...) are slides; a TIFF
is a slide when OpenSlide reads it as a tiled pyramid and an image otherwise. A folder holds
slides when any file under it is one (searched recursively, as ``tile`` does), else patches
artifacts when it holds any ``.h5`` (recursively: ``tile``'s output for a folder of slides,
whose thumbnails are not inputs), else it is a folder of images (its top level).
"""

from __future__ import annotations

from pathlib import Path

from histoseg_cli.core.data.format import ARTIFACT_SUFFIXES
from histoseg_cli.core.errors import InputError
from histoseg_cli.core.folder_run import files_under
from histoseg_cli.core.imageio import IMAGE_SUFFIXES, list_images
from histoseg_cli.core.slides.batch import find_slides

TIFF_SUFFIXES = (".tif", ".tiff")
#: Image formats that are never slides.
PLAIN_IMAGE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in TIFF_SUFFIXES)

MODES = ("artifact", "artifacts", "image", "images", "slide", "slides")


def is_slide(path: Path) -> bool:
    """A scanner format, or a TIFF that OpenSlide reads as a tiled pyramid."""
    suffix = path.suffix.lower()
    if suffix in PLAIN_IMAGE_SUFFIXES or suffix in ARTIFACT_SUFFIXES:
        return False
    if suffix in TIFF_SUFFIXES:
        import openslide

        try:
            return openslide.OpenSlide.detect_format(str(path)) not in (None, "")
        except (OSError, openslide.OpenSlideError):
            return False
    return True


def input_mode(path: Path) -> str:
    """One of :data:`MODES` for ``path``; an :class:`InputError` naming it otherwise."""
    if not path.exists():
        raise InputError(path, "no such file or folder (expected a patches artifact, an image, "
                         "a slide, or a folder of images or slides)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in ARTIFACT_SUFFIXES:
            return "artifact"
        if suffix in IMAGE_SUFFIXES and not is_slide(path):
            return "image"
        return "slide"
    if slides_in(path):
        return "slides"
    if artifacts_in(path):
        return "artifacts"
    if list_images(path):
        return "images"
    raise InputError(path, "holds no slides, patches artifacts or images (expected "
                     ".svs/.ndpi/.mrxs/tiled TIFF slides, .h5 artifacts from histoseg tile, or "
                     f"{'/'.join(IMAGE_SUFFIXES)} images); for a patch dataset folder pass "
                     "{dataset}")


def slides_in(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The slides under ``folder`` (recursive), leaving out plain images."""
    try:
        found = find_slides(folder, exclude=exclude)
    except InputError:
        return []
    return [p for p in found if is_slide(p)]


def artifacts_in(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The ``.h5`` files under ``folder`` (recursive, sorted; hidden ones, e.g. a partial
    output, and anything under ``exclude`` left out)."""
    return files_under(folder, ARTIFACT_SUFFIXES, exclude)
