"""Opening a derived artifact together with the patches artifact it links to."""

from __future__ import annotations

from pathlib import Path

from histoseg_cli.core.data.format import names_digest
from histoseg_cli.core.data.kinds import get_kind
from histoseg_cli.core.data.reader import Artifact
from histoseg_cli.core.errors import InputError


def open_linked(path: str | Path, input_path: str | Path | None = None,
                kind: str = "pseudo-masks") -> tuple[Artifact, Artifact]:
    """Open a derived artifact and the patches artifact it links to, checked to match.

    The input is ``input_path`` when given, else the recorded path, else a file of the same
    name beside ``path`` (both files moved together). Its names, in order, must be those the
    derived artifact was computed from; otherwise an ``InputError`` says which differ.
    """
    derived = Artifact(path)
    if derived.kind != kind:
        derived.close()
        raise InputError(path, f"is a '{derived.kind}' artifact; expected '{kind}' "
                         f"({get_kind(kind).description})")
    link = derived.meta.link
    if link is None:
        derived.close()
        raise InputError(path, "records no input patches artifact")
    candidates = ([Path(input_path)] if input_path is not None
                  else [Path(link.path), derived.path.parent / Path(link.path).name])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        derived.close()
        raise InputError(path, f"its input {link.path} is missing; pass the patches artifact "
                         "it was computed from explicitly")
    source = Artifact(found)
    if source.kind != "patches":
        raise InputError(found, f"is a '{source.kind}' artifact; expected the patches artifact "
                         f"{derived.path.name} was computed from")
    names = source.names()
    if len(names) != link.num_patches or names_digest(names) != link.names_sha256:
        mine = derived.names()
        first = next((i for i, (a, b) in enumerate(zip(mine, names)) if a != b),
                     min(len(mine), len(names)))
        derived.close()
        source.close()
        raise InputError(found, f"does not match {derived.path.name}: it has {len(names)} "
                         f"patches, the {kind} were computed from {link.num_patches}; first "
                         f"difference at row {first}. Recompute the {kind} from this input")
    return derived, source
