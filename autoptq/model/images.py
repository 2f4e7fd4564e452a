"""Calibration from a folder of images with a declared preprocessing (the `images` extra: Pillow).

Images in class subfolders (`cats/`, `dogs/`) get labels by the sorted subfolder order; images directly in the
folder carry no labels. Every image is resized to the declared size and normalised as
`(pixel * scale - mean) / std`, per channel, then laid out as NCHW or NHWC with a batch axis of one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from autoptq.errors import DataError
from autoptq.schema import StrictModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp")


class ImagePreprocessing(StrictModel):
    """How images become model inputs."""

    size: tuple[int, int] = Field(description="height, width in pixels")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "L"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @model_validator(mode="after")
    def _channels_agree(self) -> ImagePreprocessing:
        channels = 1 if self.color == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values for {self.color}, got {len(values)}")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        return self

    @property
    def channels(self) -> int:
        """1 for greyscale, else 3."""
        return 1 if self.color == "L" else 3


def parse_preprocessing(text: str) -> ImagePreprocessing:
    """Parse `size=224x224,layout=NCHW,color=RGB,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225`."""
    fields: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise DataError(f"--preprocess {text!r}: expected key=value pairs, got {part!r}")
        key = key.strip()
        if key == "size":
            match = re.fullmatch(r"(\d+)x(\d+)", value.strip())
            if not match:
                raise DataError(f"--preprocess: size must look like 224x224, got {value!r}")
            fields["size"] = (int(match.group(1)), int(match.group(2)))
        elif key in ("mean", "std"):
            fields[key] = [_number(v, text) for v in value.split("/")]
        elif key == "scale":
            fields[key] = _number(value, text)
        else:
            fields[key] = value.strip()
    try:
        return ImagePreprocessing.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "preprocess"
        raise DataError(f"--preprocess {text!r}: {where}: {err['msg']}") from exc


def _number(value: str, text: str) -> float:
    numerator, _, denominator = value.strip().partition("/")
    try:
        return float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        raise DataError(f"--preprocess {text!r}: {value!r} is not a number") from None


def image_files(folder: Path) -> list[tuple[Path, str | None]]:
    """Images of `folder` (sorted), each with its class subfolder name or None."""
    found = [(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        found += [(p, sub.name) for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return found


def load_images(folder: Path, preprocessing: ImagePreprocessing) -> tuple[np.ndarray, np.ndarray | None]:
    """All images of `folder` as a float32 array [N, 1, ...layout...] and labels when in class subfolders."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("a folder of images needs Pillow: pip install 'autoptq[images]'") from None
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    classes = sorted({label for _, label in files if label is not None})
    if classes and any(label is None for _, label in files):
        raise DataError(f"{folder}: mixes loose images with class subfolders; use one or the other")
    height, width = preprocessing.size
    arrays = []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                mode = "L" if preprocessing.color == "L" else "RGB"
                pixels = np.asarray(image.convert(mode).resize((width, height), Image.BILINEAR), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
        pixels = pixels.reshape(height, width, preprocessing.channels)
        if preprocessing.color == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.asarray(preprocessing.mean, np.float32)
        std = np.asarray(preprocessing.std, np.float32)
        normalised = (pixels * np.float32(preprocessing.scale) - mean) / std
        if preprocessing.layout == "NCHW":
            normalised = normalised.transpose(2, 0, 1)
        arrays.append(normalised[np.newaxis].astype(np.float32))
    labels = np.asarray([classes.index(label) for _, label in files], np.int64) if classes else None
    return np.stack(arrays), labels
