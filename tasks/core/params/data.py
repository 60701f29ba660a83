"""Sections of the data stages: the datasets (``data:``, stage prepare) and the bounds their
manifests are checked against (``validation:``, stage validate)."""

from __future__ import annotations

from pydantic import Field, model_validator

from tasks.core.params.names import MAX_SEED
from tasks.core.params.section import Section

# the built-in datasets; their recipes are tasks.data.builtins.BUILTINS (a test keeps both equal)
BUILTIN_DATASETS = ("mnist5k", "uci-digits", "mnist-m", "fashion-mnist")

# How a source is matched to a target that was made a particular way, for
# ``pretrain.source_fit_frame`` / ``source_resolution: auto``: uci-digits are 8x8 digits cropped
# to fill their frame, so an MNIST source is cropped to its ink and downsampled to 8 px. Every
# other target (a user's folder included) gets no such matching.
SOURCE_MATCHING: dict[str, tuple[bool, int | None]] = {"uci-digits": (True, 8)}


class DatasetParams(Section):
    # builtin and path exclude each other (overrides.EXCLUSIVE_KEYS): params.yaml gives one,
    # so the other is absent there and None here, the only defaults a section declares
    builtin: str | None = Field(None, description="one of BUILTIN_DATASETS")
    path: str | None = Field(
        None, description="an ImageFolder directory (one subfolder per class); replaces builtin"
    )
    classes: tuple[str, ...] | None = Field(
        description="the label space; folder names must be among these (label = index)"
    )
    skip_bad_files: bool = Field(
        description="skip (and count) unreadable or invalid files instead of failing"
    )
    limit: int | None = Field(ge=10, description="stratified subsample before splitting")
    test_fraction: float = Field(gt=0.0, lt=1.0)
    val_per_class: int = Field(ge=0, description="labelled validation images per class")
    labels_per_class: int | None = Field(
        ge=1, description="labelled training images per class; null = all the rest"
    )
    unlabeled: bool = Field(
        description="a folder of images without labels (any layout; subfolder names are not "
        "classes): one class, for self-supervised pretraining; source only"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetParams:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of builtin: NAME or path: DIR")
        if self.builtin is not None and self.builtin not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise ValueError(f"unknown built-in dataset {self.builtin!r} (known: {known})")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat")
        if self.unlabeled and self.classes is not None:
            raise ValueError("unlabeled: true has no classes; leave classes null")
        if self.unlabeled and self.path is None:
            raise ValueError(
                "unlabeled: true is for a folder (path: DIR); a built-in's labels "
                "are ignored by a self-supervised pretrain.objective anyway"
            )
        return self


class DataParams(Section):
    split_seed: int = Field(
        ge=0, le=MAX_SEED, description="fixes the test split independently of base.seed"
    )
    max_image_pixels: int = Field(
        ge=64, description="larger images are rejected (decompression bombs)"
    )
    source: DatasetParams
    target: DatasetParams

    @model_validator(mode="after")
    def _target_labelled(self) -> DataParams:
        if self.target.unlabeled:
            raise ValueError(
                "target.unlabeled: the target must be labelled (its test split "
                "measures every model); unlabelled images belong in data.source"
            )
        return self


class ValidationParams(Section):
    """Bounds of the Great Expectations suites run on every manifest (stage validate)."""

    warn_only: tuple[str, ...] = Field(
        description="expectations downgraded to warnings: 'type' or 'type:column'"
    )
    min_images_per_class: int = Field(ge=1)
    min_side: int = Field(ge=1, description="smallest width or height accepted, in pixels")
    max_side: int = Field(ge=1, description="largest width or height accepted, in pixels")
    min_intensity_std: float = Field(
        ge=0.0, description="per-image std of 0-255 values; blank images fall below"
    )
    mean_intensity: tuple[float, float] = Field(
        description="bounds of the per-image mean of 0-255 values"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationParams:
        if self.min_side > self.max_side:
            raise ValueError("min_side must not exceed max_side")
        low, high = self.mean_intensity
        if not 0.0 <= low <= high <= 255.0:
            raise ValueError("mean_intensity must be [low, high] within 0..255")
        return self
