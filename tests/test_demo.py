import numpy as np

from histoseg_cli.core.cams.background import BackgroundConfig, background_mask
from histoseg_cli.core.data.demo import BACKGROUND, C, make_patch


def test_demo_tissue_survives_the_white_background_rule():
    """Synthetic tissue must not look like glass to cams' LUAD background rule, while the
    demo's glass regions must."""
    rng = np.random.default_rng(3)
    for k in range(C):
        image, mask = make_patch([k], 64, rng)
        assert background_mask(image[None], BackgroundConfig("white")).mean() < 0.01, k
    image, mask = make_patch([0, BACKGROUND], 64, rng)
    glass = mask == BACKGROUND
    found = background_mask(image[None], BackgroundConfig("white", min_size=10))[0]
    assert glass.any() and (found == glass).mean() > 0.95
