"""Self-supervised views (tasks/modeling/views.py): seeded, batched, in range, and each
augmentation does what its key says (tests/unit/test_views.py is about DVC's views)."""

import pytest
import torch

from tasks.core.params import default_section
from tasks.modeling.views import make_views, two_views

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
ALL_ON = dict(crop_scale=[0.3, 1.0], flip=True, jitter=0.5, grayscale=0.5, blur_sigma=1.0)
PLAIN = dict(crop_scale=[1.0, 1.0], flip=False, jitter=0.0, grayscale=0.0, blur_sigma=0.0)


def _ssl(**values):
    return default_section("pretrain.ssl", **values)


def _batch(n=16, channels=3, size=16, seed=0):
    pixels = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    mean = torch.tensor(MEAN[:channels])[None, :, None, None]
    std = torch.tensor(STD[:channels])[None, :, None, None]
    return (pixels - mean) / std, mean, std


@pytest.mark.parametrize("channels", [1, 3])
def test_views_are_seeded_and_stay_in_the_pixel_range(channels):
    x, mean, std = _batch(channels=channels)
    ssl, stats = _ssl(**ALL_ON), (MEAN[:channels], STD[:channels])
    a1, a2 = two_views(x, ssl, torch.Generator().manual_seed(1), *stats)
    b1, b2 = two_views(x, ssl, torch.Generator().manual_seed(1), *stats)
    c1, _ = two_views(x, ssl, torch.Generator().manual_seed(2), *stats)
    assert a1.shape == x.shape and a1.dtype == x.dtype
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, a2) and not torch.allclose(a1, c1)
    pixels = a1 * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_whole_image_without_pixel_augmentations_is_the_image():
    x, _, _ = _batch()
    view = make_views(x, _ssl(**PLAIN), torch.Generator().manual_seed(0), MEAN, STD)
    torch.testing.assert_close(view, x, atol=1e-5, rtol=0)


def test_flip_mirrors_some_images_and_only_when_on():
    x, _, _ = _batch(n=32)
    view = make_views(
        x, _ssl(**{**PLAIN, "flip": True}), torch.Generator().manual_seed(0), MEAN, STD
    )
    same = [torch.allclose(v, i, atol=1e-5) for v, i in zip(view, x, strict=True)]
    mirrored = [torch.allclose(v, i.flip(-1), atol=1e-5) for v, i in zip(view, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 0 < sum(mirrored) < len(x)


def test_grayscale_makes_the_channels_equal():
    x, mean, std = _batch()
    view = make_views(x, _ssl(**{**PLAIN, "grayscale": 1.0}), torch.Generator(), MEAN, STD)
    pixels = view * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)


def test_crop_and_blur_change_the_image():
    x, _, _ = _batch()
    crop = make_views(x, _ssl(**{**PLAIN, "crop_scale": [0.3, 0.3]}), torch.Generator(), MEAN, STD)
    blur = make_views(x, _ssl(**{**PLAIN, "blur_sigma": 1.0}), torch.Generator(), MEAN, STD)
    assert all(not torch.allclose(c, i, atol=1e-3) for c, i in zip(crop, x, strict=True))
    blurred = [not torch.allclose(b, i, atol=1e-3) for b, i in zip(blur, x, strict=True)]
    assert 0 < sum(blurred) < len(x)  # with probability one half
    # a blur smooths: neighbouring pixels of the blurred images differ less
    rough = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    smooth = (blur[blurred][:, :, :, 1:] - blur[blurred][:, :, :, :-1]).abs().mean()
    assert smooth < 0.7 * rough
