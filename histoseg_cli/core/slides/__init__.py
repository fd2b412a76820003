"""Whole-slide images -> artifacts: reading, resolution, tissue, streaming tiles, folders.

Entry points for other stages: :func:`histoseg_cli.core.slides.batch.tile_slides` (a slide or a
folder), :func:`histoseg_cli.core.slides.extract.prepare_slide` and
:class:`~histoseg_cli.core.slides.extract.SlideTiling` (one slide), and the building
blocks :class:`~histoseg_cli.core.slides.reader.SlideReader`,
:func:`~histoseg_cli.core.slides.resolution.choose_resolution`,
:func:`~histoseg_cli.core.slides.tissue.detect_tissue` for slide-level prediction.
"""
