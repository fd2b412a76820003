import numpy as np
import pytest

from histoseg_cli.core.errors import InputError
from histoseg_cli.core.data.labels import parse_label, strip_label


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1031280-2300-27920-[1 0 0 1].png", [1, 0, 0, 1]),
        ("TCGA-A1-A0SK-DX1+12[1001].png", [1, 0, 0, 1]),
        ("436219-7159-48057-[1, 0, 0].png", [1, 0, 0]),
        ("x-[0 1 1 0].png", [0, 1, 1, 0]),
        ("a[1] b-[0, 1, 0].png", [0, 1, 0]),  # the last bracket counts
    ],
)
def test_parse_label_spellings(name: str, expected: list[int]) -> None:
    label = parse_label(name, len(expected))
    assert label.dtype == np.uint8
    assert label.tolist() == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("1031280-2300-27920.png", "carries no label"),
        ("x-[1 0 1].png", "has 3 flags, expected 4"),
        ("x-[10011].png", "has 5 flags, expected 4"),
        ("x-[1 2 0 0].png", "not a list of 0/1 flags"),
        ("x-[0 0 0 0].png", "sets no class"),
        ("x-[].png", "not a list of 0/1 flags"),
    ],
)
def test_parse_label_errors_name_the_file(name: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_label(f"/data/train/{name}", 4)
    assert name in str(err.value)
    assert message in str(err.value)


def test_strip_label_keeps_patch_name() -> None:
    assert strip_label("1031280-2300-27920-[1 0 0 1].png") == "1031280-2300-27920"
    assert strip_label("img+12[1001].png") == "img+12"
