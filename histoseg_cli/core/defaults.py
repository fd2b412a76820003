"""The defaults and choices that several commands share, in one place and without heavy
imports (help texts read them before torch is loaded).

Core code takes its defaults from here, and the CLI's shared options show the same values, so
a default changes in one line.
"""

from __future__ import annotations

from histoseg_cli.core.errors import UsageError

#: ``--device``: where networks run (``cuda:N`` picks a GPU).
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: ``--precision`` of PyTorch inference and training: autocast dtype ("auto": bf16 on CUDA).
PRECISIONS = ("auto", "fp32", "bf16")
#: The gate: a class whose gate probability is <= this is masked out of a window.
GATE_THRESHOLD = 0.1
#: Grey value above which a pixel counts as white glass (CAM background rule).
WHITE_THRESHOLD = 200.0
#: Slides: keep tiles with at least this tissue fraction.
MIN_TISSUE = 0.25
#: Slides: longer side of the thumbnail tissue is detected on.
THUMBNAIL_SIZE = 1024
#: Slides: the resolution patches are read at when nothing else says (10x = 1.0 um/px).
MAGNIFICATION = 10.0
#: Slides: at most this many reading processes by default (fewer on smaller machines).
MAX_READERS = 4


def check_choice(value: str, choices: tuple[str, ...], setting: str) -> str:
    """``value`` if it is one of ``choices``; otherwise one ``UsageError`` worded the same
    way for every setting (``setting`` is its field, e.g. ``precision``)."""
    if value not in choices:
        raise UsageError(f"'{value}' is not one of {', '.join(choices)}", setting)
    return value


def default_readers() -> int:
    """Slide-reading processes when not given: the CPUs this process may use, at most
    :data:`MAX_READERS`."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_READERS, cpus or 1))
