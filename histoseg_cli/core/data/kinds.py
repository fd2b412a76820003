"""Registry of artifact kinds: what each kind must hold and how its datasets are shaped.

Every artifact has a ``kind`` attribute (absent means ``patches``). A kind declares its primary
per-row dataset, the shapes of the datasets it defines (``None`` for a free axis), and whether
it links to a patches artifact (``input_path``). Readers and writers consult the registry, so a
new kind is one :func:`register_kind` call, not edits across the format code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Shapes without the leading row axis, for a patch side ``p`` and ``c`` classes; ``None`` is a
#: free axis (e.g. the number of CAM layers).
ShapeRule = Callable[[int, int], dict[str, tuple[int | None, ...]]]


def _common(p: int, c: int) -> dict[str, tuple[int | None, ...]]:
    return {"labels": (c,), "masks": (p, p), "coords": (2,)}


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact: ``primary`` must be present; ``link`` is "none", "required" or
    "optional" (a derived kind computed from a patches artifact)."""

    name: str
    primary: str
    description: str
    link: str = "none"
    shapes: ShapeRule = field(default=lambda p, c: {})

    def expected_shapes(self, patch_size: int, num_classes: int
                        ) -> dict[str, tuple[int | None, ...]]:
        """Per-row shapes of the datasets this kind (and every kind) defines."""
        return {**_common(patch_size, num_classes), **self.shapes(patch_size, num_classes)}

    def check_link(self, has_link: bool) -> str | None:
        """Why the presence/absence of an input link is wrong for this kind, or None."""
        if self.link == "required" and not has_link:
            return (f"a {self.name} artifact needs one input link (the patches artifact it was "
                    "made from)")
        if self.link == "none" and has_link:
            return f"a {self.name} artifact has no input link"
        return None


KINDS: dict[str, ArtifactKind] = {}

#: Datasets any kind may hold besides its own (``names`` is always there).
CORE_DATASETS = ("patches", "labels", "masks", "names", "coords")


def register_kind(kind: ArtifactKind) -> ArtifactKind:
    """Make ``kind`` readable and writable."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> ArtifactKind:
    """The registered kind ``name`` (``KeyError`` with the choices otherwise)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown artifact kind {name!r}; one of {', '.join(sorted(KINDS))}"
                       ) from None


PATCHES = register_kind(ArtifactKind(
    "patches", "patches", "patches with labels, masks or coordinates",
    shapes=lambda p, c: {"patches": (p, p, 3)}))
PSEUDO_MASKS = register_kind(ArtifactKind(
    "pseudo-masks", "pseudo_masks", "pseudo masks (one label map per CAM layer and patch)",
    link="required",
    shapes=lambda p, c: {"pseudo_masks": (None, p, p), "cams": (None, c, p, p)}))
PREDICTIONS = register_kind(ArtifactKind(
    "predictions", "predictions", "predicted label maps with the gate's class probabilities",
    link="optional",
    shapes=lambda p, c: {"predictions": (p, p), "gate_probs": (c,), "probs": (c, p, p)}))
