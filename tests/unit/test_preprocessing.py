import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core.params import default_section
from tasks.data.preprocessing import preprocess

GREY = default_section("preprocess", image_size=16, channels=1, mean=(0.5,), std=(0.5,))
RGB = default_section("preprocess", image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_uint8_grey_batch_is_resized_and_normalised():
    images = np.full((4, 8, 8), 255, dtype=np.uint8)
    out = preprocess(images, GREY)
    assert out.shape == (4, 1, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5


def test_channels_convert_both_ways_and_paths_load(tmp_path):
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    assert preprocess([rgb], GREY).shape == (1, 1, 16, 16)
    assert preprocess([np.zeros((8, 8), np.uint8)], RGB).shape == (1, 3, 16, 16)
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P").save(path)
    from_path = preprocess([path], GREY)
    from_array = preprocess([np.asarray(Image.open(path).convert("L"))], GREY)
    assert torch.allclose(from_path, from_array)


def test_mixed_sizes_and_rgba_are_accepted():
    images = [np.zeros((8, 8), np.uint8), np.zeros((20, 30, 4), np.uint8)]
    assert preprocess(images, RGB).shape == (2, 3, 16, 16)


def test_degrade_to_loses_detail():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    sharp, blurred = preprocess([image], GREY), preprocess([image], GREY, degrade_to=4)
    assert blurred.std() < sharp.std()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8), 2.0), r"float images must be in \[0, 1\]"),
        (np.zeros((8, 8), dtype=np.int32), "expected uint8"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), "HxW or HxWxC"),
    ],
)
def test_bad_inputs_are_explained(image, message):
    with pytest.raises(ValueError, match=message):
        preprocess([image], GREY)


def test_unreadable_file_is_named(tmp_path):
    from tasks.data.preprocessing import read_image

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        read_image(bad, channels=1)


def test_fit_to_frame_makes_a_small_digit_fill_the_frame_in_height():
    from tasks.data.preprocessing import fit_to_frame

    image = torch.zeros(1, 28, 28)
    image[0, 10:16, 12:15] = 1.0  # a 6x3 stroke in a wide margin
    out = fit_to_frame(image, 8)
    ink = out[0] > 0.5
    assert out.shape == (1, 8, 8)
    assert ink.any(1).all()  # every row has ink: the height fills the frame
    columns = ink.any(0).nonzero().flatten()
    assert 3 <= len(columns) <= 5 and columns[0] >= 1 and columns[-1] <= 6  # aspect, centred


def test_fit_to_frame_keeps_a_blank_image_and_its_background():
    from tasks.data.preprocessing import fit_to_frame

    blank = torch.full((3, 20, 20), 0.7)
    assert torch.allclose(fit_to_frame(blank, 8), torch.full((3, 8, 8), 0.7))
    light = torch.ones(1, 20, 20)
    light[0, 5:15, 8:12] = 0.0  # dark ink on a light background
    out = fit_to_frame(light, 10)
    assert out[0, :, 0].min() == 1.0 and out[0].min() < 0.1


def test_fit_frame_option_is_applied_before_the_resolution():
    digit = np.zeros((28, 28), np.uint8)
    digit[10:18, 12:16] = 255
    framed = preprocess([digit], GREY, degrade_to=8, fit_frame=True)
    plain = preprocess([digit], GREY, degrade_to=8)
    assert framed.shape == plain.shape == (1, 1, 16, 16)
    assert (framed > 0).sum() > 2 * (plain > 0).sum()


MODES = ("bilinear", "bicubic", "nearest")


def _cfg(channels: int, mode: str, size: int = 24):
    return default_section(
        "preprocess",
        image_size=size,
        channels=channels,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        interpolation=mode,
    )


def test_each_interpolation_mode_is_applied():
    image = np.random.default_rng(0).integers(0, 256, (10, 10), dtype=np.uint8)
    out = {mode: preprocess([image], _cfg(1, mode)) for mode in MODES}
    assert not torch.allclose(out["bilinear"], out["bicubic"])
    values = set(((image / 255.0 - 0.5) / 0.5).astype(np.float32).round(5).flat)
    assert set(out["nearest"].numpy().round(5).flat) <= values  # nearest invents no value
    assert out["bicubic"].min() >= -1.0 and out["bicubic"].max() <= 1.0  # overshoot clamped
    down = np.random.default_rng(1).integers(0, 256, (60, 60), dtype=np.uint8)
    for mode in ("bilinear", "bicubic"):  # antialiased: downsizing averages, as PIL does
        smooth = preprocess([down], _cfg(1, mode, size=12))
        assert smooth.std() < preprocess([down], _cfg(1, "nearest", size=12)).std()


@pytest.mark.parametrize("mode", MODES)
def test_grey_into_an_rgb_model_is_repeated_in_every_mode(mode):
    grey = np.random.default_rng(2).integers(0, 256, (13, 17), dtype=np.uint8)
    rgb_out = preprocess([grey], _cfg(3, mode))
    assert rgb_out.shape == (1, 3, 24, 24)
    assert torch.equal(rgb_out[:, 0], rgb_out[:, 1]) and torch.equal(rgb_out[:, 1], rgb_out[:, 2])
    assert torch.allclose(rgb_out[:, :1], preprocess([grey], _cfg(1, mode)))


@pytest.mark.parametrize("mode", MODES)
def test_rgb_into_a_grey_model_becomes_its_luma_in_every_mode(mode, tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    luma = (rgb / 255.0) @ np.array([0.299, 0.587, 0.114])
    expected = preprocess([luma.astype(np.float32)], _cfg(1, mode))
    assert torch.allclose(preprocess([rgb], _cfg(1, mode)), expected, atol=1e-5)
    path = tmp_path / "colour.png"  # a file is converted by PIL: the same luma, rounded
    Image.fromarray(rgb).save(path)
    assert torch.allclose(preprocess([path], _cfg(1, mode)), expected, atol=2.5 / 255 / 0.5)


def test_conversion_note_says_what_happens_to_the_other_kind():
    from tasks.data.preprocessing import conversion_note, describe_input

    assert conversion_note((1,), 1) is None and conversion_note((3,), 3) is None
    assert conversion_note((1,), 3).startswith("the images are grey: they are repeated into 3")
    assert conversion_note((1, 3), 3).startswith("some of the images are grey")
    assert "converted to grey (luma" in conversion_note((3,), 1)
    described = describe_input(_cfg(3, "bicubic"))
    assert (
        "24x24 pixels (bicubic resizing)" in described and "grey images are repeated" in described
    )


def test_image_channels_come_from_the_manifest_modes(tmp_path):
    from tasks.data.manifest import MANIFEST_COLUMNS, image_channels, write_manifest

    def rows(*modes):
        blank = dict.fromkeys(MANIFEST_COLUMNS, 0)
        return [
            tuple({**blank, "path": f"{i}.png", "mode": m}.values()) for i, m in enumerate(modes)
        ]

    for modes, kinds in [(("L", "L"), (1,)), (("RGB", "P"), (3,)), (("LA", "RGBA"), (1, 3))]:
        write_manifest(tmp_path, rows(*modes), {"classes": []})
        assert image_channels(tmp_path) == kinds


def test_cards_record_the_conversion_and_older_cards_load():
    from tasks.modeling.models import ModelCard

    old = {"arch": "resnet10t", "classes": ["0"], "preprocess": _cfg(1, "bilinear").model_dump()}
    assert ModelCard.model_validate(old).input_conversion is None
    note = "the images are grey: they are repeated into 3 channels"
    card = ModelCard.model_validate({**old, "input_conversion": note})
    assert ModelCard.model_validate_json(card.model_dump_json()).input_conversion == note
