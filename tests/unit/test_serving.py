from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.registry.serving import as_image_list


def test_batches_and_single_images():
    assert len(as_image_list(np.zeros((5, 8, 8), np.uint8))) == 5
    assert len(as_image_list(np.zeros((8, 8), np.uint8))) == 1
    assert len(as_image_list(np.zeros((28, 28, 3), np.uint8))) == 1
    assert len(as_image_list(np.zeros((2, 28, 28, 3), np.uint8))) == 2


def test_paths_lists_and_frames():
    assert as_image_list("a.png") == ["a.png"]
    assert as_image_list([Path("a.png"), "b.png"]) == [Path("a.png"), "b.png"]
    frame = pd.DataFrame({"path": ["a.png", "b.png"]})
    assert as_image_list(frame) == ["a.png", "b.png"]


def test_json_integer_images_become_uint8():
    images = as_image_list([[[0, 255], [16, 3]]])
    assert images[0].dtype == np.uint8
    with pytest.raises(ValueError, match="0..255"):
        as_image_list([[[0, 256], [0, 0]]])
