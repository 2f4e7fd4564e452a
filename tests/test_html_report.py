"""report.html as a person sees it: rendered for the shipped example, opened in headless Chromium (screenshot at
1280 px, the DOM as the browser parsed it, and Chromium's own network log), plus the page's contract without a
browser: sections, self-containment, byte-identical output, the tables-only page without matplotlib."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from autoptq.cli import main
from autoptq.report import html_page as html_report
from autoptq.report import plots
from autoptq.report.models import (
    CoverageMap,
    HtmlReport,
    LatencyBreakdown,
    LatencyPart,
    LayerPlacement,
    LayerSqnr,
    Ratio,
    SensitivityBar,
    SensitivityView,
    SqnrAlongGraph,
    SummaryCard,
    TargetSection,
    TrialPoint,
    TrialsView,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = ["Coverage map", "SQNR along the graph", "Sensitivity", "Trials of the accuracy loop", "Latency breakdown"]
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    # The network is blocked: no name resolves (the page must need none).
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def _cli(args: list[object]) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0


def _variants(folder: Path, targets: str) -> Path:
    # Full int8 keeps ~41 dB of output SQNR on the example; 44 dB makes the accuracy loop keep a node in float.
    code = _cli(
        ["variants", EXAMPLE / "digits_cnn.onnx", "--targets", targets, "--data", EXAMPLE / "calib.npz",
         "--val", EXAMPLE / "val.npz", "--min-sqnr", "44", "-o", folder]
    )  # fmt: skip
    assert code == 0
    return folder / "report.html"


@pytest.fixture(scope="module")
def example_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`autoptq variants` on the shipped example with an accuracy budget, for a device with a host and a CPU."""
    return _variants(tmp_path_factory.mktemp("variants"), "edgetpu,x86-vnni")


class _Figures(HTMLParser):
    """Per <figure>: how many drawing elements its SVG holds; and every URL-bearing attribute of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[int] = []
        self.depth = 0
        self.urls: list[str] = []
        self.scripts = 0
        self.csp: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [v for k, v in values.items() if k in ("src", "href", "xlink:href", "action") and v]
        self.scripts += tag == "script"
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp = values.get("content")
        if tag == "figure":
            self.figures.append(0)
            self.depth += 1
        elif self.depth and tag in ("path", "rect", "use", "text", "line", "polyline", "circle"):
            self.figures[-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.depth -= 1


def _parse(text: str) -> _Figures:
    parser = _Figures()
    parser.feed(text)
    return parser


def test_every_section_for_every_target(example_report: Path) -> None:
    text = example_report.read_text(encoding="utf-8")
    for target in ("edgetpu", "x86-vnni"):
        assert f'id="target-{target}"' in text
    section = text.split('id="target-edgetpu"')[1].split("</section>")[0]
    for title in SECTIONS:
        assert f"<h3>{title}</h3>" in section
    assert "Not shown" not in section  # a budget was set: every section has data for the Edge TPU
    assert section.count('<tr class="kept">') == 1  # the node the choice keeps in float, highlighted
    assert f"fill: {plots.KEPT_FLOAT}" in section.split("<h3>Sensitivity</h3>")[1].split("<h3>")[0]
    assert "min output SQNR dB" in section  # the trials are plotted on the metric the budget is on
    assert "<summary>Recipe</summary>" in section and "<summary>Decision path</summary>" in section
    assert "estimated</span>" in section and "measured</span>" in section  # ratios carry their label
    page = _parse(text)
    assert page.csp == html_report.CSP
    assert page.scripts == 0
    assert [u for u in page.urls if not u.startswith("#")] == []  # only in-page anchors: nothing to fetch


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    first = _variants(tmp_path / "a", "edgetpu").read_bytes()
    second = _variants(tmp_path / "b", "edgetpu").read_bytes()
    assert first == second


def test_without_matplotlib_tables_and_how_to_get_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    code, stdout, _ = run_cli(
        ["sensitivity", EXAMPLE / "digits_cnn.onnx", "-t", "edgetpu", "--data", EXAMPLE / "calib.npz",
         "--val", EXAMPLE / "val.npz", "-f", "html"]
    )  # fmt: skip
    assert code == 0
    assert escape(plots.INSTALL_HINT) in stdout
    assert "<svg" not in stdout and "<figure" not in stdout
    assert stdout.count("<table>") == 4  # coverage, SQNR along the graph, sensitivity, latency


def _chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    command = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for, from Chromium's network log. The browser's own background traffic has no origin
    ('not an origin'); anything a page loads carries the page's."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and e.get("params", {}).get("initiator", "not an origin") != "not an origin"
    ]


@needs_chromium
def test_network_log_sees_a_page_request_and_the_policy_blocks_it(tmp_path: Path) -> None:
    """The two checks the report test relies on can fail: a page fetching an image shows in the log, and the same
    page under the report's Content-Security-Policy fetches nothing."""
    image = '<img src="http://127.0.0.1:9/pixel.png" alt="">'
    open_page = tmp_path / "open.html"
    open_page.write_text(f"<!DOCTYPE html><html><body>{image}</body></html>")
    strict = tmp_path / "strict.html"
    strict.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{html_report.CSP}">'
        f"</head><body>{image}</body></html>"
    )
    for page, expected in ((open_page, ["http://127.0.0.1:9/pixel.png"]), (strict, [])):
        log = tmp_path / f"{page.stem}.json"
        _chromium(page, tmp_path, f"--log-net-log={log}", "--dump-dom")
        assert _page_requests(log) == expected


@needs_chromium
def test_report_in_headless_chromium(example_report: Path, tmp_path: Path) -> None:
    log = tmp_path / "net.json"
    dom = _chromium(example_report, tmp_path, f"--log-net-log={log}", "--dump-dom").stdout
    assert _page_requests(log) == []
    figures = _parse(dom).figures
    # Every section with data has its figure (x86-vnni keeps float here: no SQNR or sensitivity to draw).
    shown = example_report.read_text(encoding="utf-8").count("<h3>") - example_report.read_text().count("Not shown")
    assert len(figures) == shown >= len(SECTIONS)
    assert min(figures) > 10, figures  # every figure has drawn content

    shot = tmp_path / "page.png"
    _chromium(example_report, tmp_path, "--window-size=1280,2000", f"--screenshot={shot}")
    _readable_at_1280(Image.open(shot).convert("RGB"))


def _readable_at_1280(image: Image.Image) -> None:
    """Content fills the centre column, and nothing spills past it into the right margin (no horizontal
    overflow at 1280 px); the first figures' colours are on screen."""
    assert image.size == (1280, 2000)
    background = image.getpixel((1275, 5))
    margin = image.crop((1200, 0, 1280, image.height))
    assert margin.getcolors(maxcolors=4) == [(margin.width * margin.height, background)]
    content = image.crop((100, 0, 1180, image.height))
    assert len(content.getcolors(maxcolors=1 << 16) or []) > 50  # text, cards, figures; not a blank page
    green = plots.PLACE_COLOURS["device"]
    device = tuple(int(green[i : i + 2], 16) for i in (1, 3, 5))
    assert any(colour == device for _, colour in content.getcolors(maxcolors=1 << 16))


@pytest.mark.parametrize("fmt", ["html", "json", "table"])
def test_sensitivity_command(fmt: str, tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]) -> None:
    out = tmp_path / f"ranking.{fmt}"
    code, stdout, _ = run_cli(
        ["sensitivity", EXAMPLE / "digits_cnn.onnx", "--target", "edgetpu", "--data", EXAMPLE / "calib.npz",
         "--val", EXAMPLE / "val.npz", "--format", fmt, "-o", out]
    )  # fmt: skip
    assert code == 0
    assert out.read_text() == stdout
    if fmt == "json":
        result = json.loads(stdout)["results"][0]
        assert result["technique"] == "full_int8"
        nodes = [n["node"] for n in result["nodes"]]
        assert sorted(nodes) == ["conv1", "conv2", "conv3", "fc"]
        sqnrs = [n["output_sqnr_db"] for n in result["nodes"]]
        assert sqnrs == sorted(sqnrs)  # most damaging first
        assert result["full_output_sqnr_db"] < min(sqnrs)  # every node quantized hurts more than any one alone
    elif fmt == "html":
        assert "<h3>Sensitivity</h3>" in stdout and "<svg" in stdout
    else:
        assert "most damaging first" in stdout


def test_sensitivity_bad_input(tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]) -> None:
    wrong = tmp_path / "wrong.npz"
    import numpy as np

    np.savez(wrong, other=np.zeros((4, 3), np.float32))
    out = tmp_path / "out.json"
    code, stdout, stderr = run_cli(
        ["sensitivity", EXAMPLE / "digits_cnn.onnx", "-t", "edgetpu", "--data", wrong, "-f", "json", "-o", out]
    )
    assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["audit", "check", "quantize"])
def test_other_commands_render_html(
    command: str, tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    model = EXAMPLE / "digits_cnn.onnx"
    if command == "audit":
        code, stdout, _ = run_cli(["audit", model, "-t", "edgetpu,x86-vnni", "-f", "html"])
        assert code == 0 and stdout.count('<section class="target"') == 2
        assert "<h3>Coverage map</h3>" in stdout
        return
    quantized = tmp_path / "q.onnx"
    code, stdout, _ = run_cli(
        ["quantize", model, "-t", "edgetpu", "--data", EXAMPLE / "calib.npz", "-o", quantized, "-f", "html"]
    )
    assert code == 0
    if command == "quantize":
        assert "<h3>SQNR along the graph</h3>" in stdout and "Not shown: no accuracy budget" in stdout
        return
    page = tmp_path / "check.html"
    code, stdout, _ = run_cli(
        ["check", quantized, "-t", "edgetpu", "-r", model, "--data", EXAMPLE / "val.npz", "-f", "html", "-o", page]
    )
    assert code == 0 and page.read_text() == stdout
    figures = _parse(stdout).figures
    assert len(figures) == 3 and min(figures) > 10  # coverage, SQNR along the graph, latency


def _hand_made_report(node: str) -> HtmlReport:
    """A page's models written out by hand: a first cut, two nodes kept in float, three trials."""
    layers = [
        LayerPlacement(name=f"n{i}", op_type="Conv", place=place, reason="r", macs=10)
        for i, place in enumerate(["device", "device", "host", "after_cut"])
    ]
    layers.append(LayerPlacement(name=node, op_type="Relu", place="after_cut", reason="after the cut", macs=0))
    points = [
        TrialPoint(index=i, step=f"s{i}", technique="full_int8", metric=0.9 + i / 100, latency=1.0 - i / 10,
                   size_bytes=1000 * (i + 1), meets_budget=i > 0, on_front=i > 0, chosen=i == 2)
        for i in range(3)
    ]  # fmt: skip
    section = TargetSection(
        summary=SummaryCard(
            target="edgetpu",
            technique="full_int8",
            size_ratio=Ratio(value=0.3, kind="measured", basis="file size"),
            latency_ratio=Ratio(value=0.5, kind="estimated", basis="cost model"),
            metric="accuracy 0.95 → 0.94",
            device_verdict="2 of 5 nodes on the host",
            passed=True,
        ),
        coverage=CoverageMap(
            layers=layers,
            first_cut="n2",
            first_cut_reason="Conv: shape",
            transfer_bytes=4096,
            transitions=1,
            device_mac_fraction=0.5,
            basis="float graph",
        ),
        sqnr=SqnrAlongGraph(
            layers=[LayerSqnr(tensor=f"t{i}", node=f"n{i}", op_type="Conv", sqnr_db=40.0 - i) for i in range(4)],
            samples=8,
            basis="host",
        ),
        sensitivity=SensitivityView(
            nodes=[
                SensitivityBar(node="n3", op_type="Conv", output_sqnr_db=20.0, kept_float=True),
                SensitivityBar(node=node, op_type="Relu", output_sqnr_db=25.0, kept_float=True),
                SensitivityBar(node="n1", op_type="Conv", output_sqnr_db=45.0),
            ],
            basis="alone",
        ),
        trials=TrialsView(
            metric_name="accuracy",
            latency_name="estimated latency / float",
            budget="drop ≤ 0.01",
            points=points,
            message="trial 3 meets the budget",
            tier="fast",
        ),
        latency=LatencyBreakdown(
            parts=[
                LatencyPart(label="1. device: n0 … n1", part="device", ms=1.0),
                LatencyPart(label="2. host: n2 … n4", part="host", ms=2.0),
                LatencyPart(label="transfers", part="transfers", ms=0.5),
            ],
            estimate_ms=3.5,
            low_ms=3.0,
            high_ms=4.0,
            basis="roofline",
        ),
    )
    return HtmlReport(title=f"Report of {node}", context=["made by hand"], targets=[section])


def test_renderer_marks_the_choice_and_escapes_names() -> None:
    name = "<script>alert(1)</script>"
    text = html_report.render_html(_hand_made_report(name))
    assert text == html_report.render_html(_hand_made_report(name))  # deterministic
    assert "<script>" not in text and escape(name) in text
    page = _parse(text)
    assert len(page.figures) == len(SECTIONS) and min(page.figures) > 10
    assert text.count('<tr class="kept">') == 2  # both nodes kept in float are highlighted in the table ...
    sensitivity = text.split("<h3>Sensitivity</h3>")[1].split("<h3>")[0]
    assert f"fill: {plots.KEPT_FLOAT}" in sensitivity  # ... and in the figure
    assert text.count('<tr class="chosen">') == 1 and "first cut (black line): n2, node 3" in text
    assert "4,096 bytes" in text


@pytest.mark.parametrize("family", ["transformer_block", "mobilenet_style"])
def test_sensitivity_on_other_model_families(family: str) -> None:
    """Beyond the example: a transformer block (MatMul of two activations, Softmax, Erf-GELU) and depthwise
    convolutions, with synthetic inputs; the ranking is ordered and the page draws every section it has."""
    from autoptq import api
    from autoptq.model import zoo
    from autoptq.model.calibration import synthetic_dataset
    from autoptq.model.graph import load_model

    graph = load_model(getattr(zoo, family)())
    result = api.sensitivity(graph, "edgetpu", synthetic_dataset(graph, 20))
    sqnrs = [n.output_sqnr_db for n in result.nodes]
    assert len(sqnrs) >= 5 and sqnrs == sorted(sqnrs)
    assert len(result.along_graph) >= len(result.nodes) // 2
    page = _parse(api.sensitivity_html(graph, [result]))
    assert len(page.figures) == 4 and min(page.figures) > 10  # coverage, SQNR, sensitivity, latency
