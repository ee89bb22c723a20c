"""Server-drawn SVG charts: well-formed, complete, linked, and inert whatever the labels say."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup

from stemtrace.server import charts, render
from stemtrace.server.charts import Series

NS = "{http://www.w3.org/2000/svg}"
T0 = 1_733_335_200.0  # 2024-12-04 18:00 UTC
HOUR = {"start": T0, "end": T0 + 3600, "step": 60.0}
TAGS = {"svg", "g", "rect", "text", "line", "path", "circle", "title", "a"}
HOSTILE = [
    "<script>alert(1)</script>",
    '"onload="alert(1)',
    "' onmouseover='alert(1)",
    "]]><x/><![CDATA[",
    "&amp; &lt; &#x3c;",
    "tasks.\x00nul\x1bescape\x7f",
    "lone \ud800 surrogate",
    "</text></svg><svg onload=alert(1)>",
]


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    return ET.fromstring(str(svg))


def tag(element: ET.Element) -> str:
    return element.tag.removeprefix(NS)


def found(root: ET.Element, name: str, css: str | None = None) -> list[ET.Element]:
    every = root.iter(NS + name)
    return [e for e in every if css is None or css in e.get("class", "").split()]


def titles(root: ET.Element) -> list[str]:
    return [e.text or "" for e in found(root, "title")]


def minutes(values: list[float | None]) -> list[tuple[float, float | None]]:
    return [(T0 + 60 * i, value) for i, value in enumerate(values)]


def test_a_line_chart_is_well_formed_accessible_and_csp_clean() -> None:
    series = [
        Series("succeeded", "chart-ok", minutes([3, 4, 5])),
        Series("failed", "chart-bad", []),
    ]
    root = parse(charts.line_chart(series, **HOUR, unit="tasks/min", title="Throughput"))
    assert tag(root) == "svg" and root.get("role") == "img"
    label = root.get("aria-label", "")
    assert label.startswith("Throughput, 2024-12-04 18:00 UTC to 2024-12-04 19:00 UTC")
    assert "succeeded" in label
    assert {tag(e) for e in root.iter()} <= TAGS  # no <style>, no <script>
    assert all("style" not in e.attrib for e in root.iter())
    legend = [e.text for e in found(root, "text") if e.text in ("succeeded", "failed")]
    assert legend == ["succeeded", "failed"]


def test_one_dot_per_value_and_titles_carry_the_values() -> None:
    points = minutes([3, None, 12.5, 0, 1234])
    root = parse(charts.line_chart([Series("ok", "chart-ok", points)], **HOUR,
                                   unit="tasks/min", title="t"))  # fmt: skip
    assert len(found(root, "circle", "chart-dot")) == 4
    assert titles(root) == [
        "ok · 2024-12-04 18:00 UTC · 3 tasks/min",
        "ok · 2024-12-04 18:02 UTC · 12.5 tasks/min",
        "ok · 2024-12-04 18:03 UTC · 0 tasks/min",
        "ok · 2024-12-04 18:04 UTC · 1,234 tasks/min",
    ]


@pytest.mark.parametrize(
    ("unit", "value", "text"),
    [("s", 0.35, "350 ms"), ("s", 2.1, render.duration(2.1)), ("s", 180, "3 min"),
     ("%", 4.5, "4.5%"), ("tasks/min", 7, "7 tasks/min")],
)  # fmt: skip
def test_hover_text_says_the_value_in_its_unit(unit: str, value: float, text: str) -> None:
    root = parse(charts.bar_chart([Series("a", "chart-ok", minutes([value]))], **HOUR,
                                  unit=unit, title="t"))  # fmt: skip
    assert titles(root) == [f"a · 2024-12-04 18:00 UTC · {text}"]


def test_a_none_or_a_missing_slot_breaks_the_line() -> None:
    points = [*minutes([1, 2, None, 3, 4]), (T0 + 60 * 7, 5.0), (T0 + 60 * 8, 6.0)]
    root = parse(charts.line_chart([Series("a", "chart-ok", points)], **HOUR, unit="x", title="t"))
    (line,) = found(root, "path", "chart-line")
    runs = line.get("d", "").split("M")[1:]
    assert [len(run.split("L")) for run in runs] == [2, 2, 2]


def test_a_single_point_is_a_visible_dot() -> None:
    root = parse(charts.line_chart([Series("a", "chart-ok", minutes([None, 7]))], **HOUR,
                                   unit="x", title="t"))  # fmt: skip
    (dot,) = found(root, "circle")
    assert "chart-alone" in dot.get("class", "")
    (line,) = found(root, "path", "chart-line")
    assert line.get("d", "").count("M") == 1 and "L" not in line.get("d", "")


def test_an_all_zero_series_is_drawn_on_an_axis_from_zero_to_one() -> None:
    root = parse(charts.line_chart([Series("a", "chart-ok", minutes([0, 0, 0]))], **HOUR,
                                   unit="tasks/min", title="t"))  # fmt: skip
    dots = found(root, "circle")
    assert len(dots) == 3 and len({d.get("cy") for d in dots}) == 1
    axis = next(g for g in found(root, "g", "chart-values"))
    assert [e.text for e in axis.iter(NS + "text")] == ["0", "0.25", "0.5", "0.75", "1"]
    assert "no data" not in (root.get("aria-label") or "")


@pytest.mark.parametrize(
    ("most", "unit", "top", "count"),
    [(98, "x", 100, 5), (7, "x", 8, 5), (0.9, "x", 1, 5), (1234, "x", 1500, 4),
     (12.5, "%", 15, 4), (100, "%", 100, 5), (250, "s", 360, 4), (0, "x", 1, 5),
     (3 * 3600, "s", 3 * 3600, 4)],
)  # fmt: skip
def test_the_value_axis_ends_on_a_round_number(
    most: float, unit: str, top: float, count: int
) -> None:
    ticks = charts.value_ticks(most, unit)
    assert ticks[0] == 0 and ticks[-1] == top and len(ticks) == count
    assert ticks[-1] >= most


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(0.35, "s", "350 ms"), (2, "s", "2 s"), (120, "s", "2 min"), (5400, "s", "1.5 h"),
     (0.0005, "s", "500 µs"), (0, "s", "0"), (25, "%", "25%"), (1500, "x", "1.5k"),
     (2_000_000, "x", "2M"), (0.25, "x", "0.25")],
)  # fmt: skip
def test_tick_labels_are_short(value: float, unit: str, text: str) -> None:
    assert charts.tick_label(value, unit) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_the_axis_always_covers_the_largest_value(most: float) -> None:
    for unit in ("s", "%", "tasks/min"):
        ticks = charts.value_ticks(most, unit)
        assert ticks[-1] >= most and 2 <= len(ticks) <= 6
        assert ticks == sorted(set(ticks))


def test_time_ticks_read_hours_within_a_day_and_dates_beyond() -> None:
    assert [label for _, label in charts.time_ticks(T0, T0 + 3600)] == [
        "18:00", "18:10", "18:20", "18:30", "18:40", "18:50", "19:00"]  # fmt: skip
    day = [label for _, label in charts.time_ticks(T0, T0 + 86400)]
    assert "5 Dec" in day and "12:00" in day
    week = [label for _, label in charts.time_ticks(T0, T0 + 7 * 86400)]
    assert week == ["5 Dec", "7 Dec", "9 Dec", "11 Dec"]
    assert [label for _, label in charts.time_ticks(T0, T0 + 60)][:2] == ["18:00:00", "18:00:10"]


def test_stacked_bars_one_per_value_each_on_the_one_below() -> None:
    series = [
        Series("succeeded", "chart-ok", minutes([5, 0, 2, None])),
        Series("failed", "chart-bad", minutes([1, 3, None, 4])),
    ]
    root = parse(charts.bar_chart(series, **HOUR, unit="tasks/min", title="t"))
    ok = found(
        next(g for g in found(root, "g", "chart-ok") if "chart-series" in g.get("class", "")),
        "rect",
    )
    bad = found(
        next(g for g in found(root, "g", "chart-bad") if "chart-series" in g.get("class", "")),
        "rect",
    )
    assert len(ok) == 2 and len(bad) == 3
    first_ok, first_bad = ok[0], bad[0]
    assert float(first_bad.get("y", 0)) + float(first_bad.get("height", 0)) == pytest.approx(
        float(first_ok.get("y", 0)), abs=0.02
    )
    axis = next(g for g in found(root, "g", "chart-values"))
    assert [e.text for e in axis.iter(NS + "text")][-1] == "6"  # 5 + 1 stacked


def test_links_wrap_each_point_and_bar_escaped() -> None:
    def link(t: float, series: Series) -> str | None:
        if t == T0 + 60:
            return None
        return f"/executions?name={series.label}&state=FAILURE&since={t:.0f}"

    series = [Series("a&b", "chart-bad", minutes([1, 2, 3]))]
    for draw, shape in ((charts.line_chart, "circle"), (charts.bar_chart, "rect")):
        svg = draw(series, **HOUR, unit="x", title="t", link=link)
        assert "&amp;state=FAILURE" in svg and "&state" not in svg
        links = found(parse(svg), "a")
        assert [a.get("href") for a in links] == [
            f"/executions?name=a&b&state=FAILURE&since={T0:.0f}",
            f"/executions?name=a&b&state=FAILURE&since={T0 + 120:.0f}",
        ]
        assert [[tag(shape) for shape in a] for a in links] == [[shape], [shape]]


@pytest.mark.parametrize(
    "href", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "//evil.example/"]
)
def test_a_link_that_is_not_a_page_is_dropped(href: str) -> None:
    svg = charts.bar_chart([Series("a", "chart-ok", minutes([1]))], **HOUR, unit="x", title="t",
                           link=lambda t, s: href)  # fmt: skip
    assert found(parse(svg), "a") == [] and len(found(parse(svg), "rect", "chart-bar")) == 1


@pytest.mark.parametrize(
    "series",
    [[], [Series("a", "chart-ok", [])], [Series("a", "chart-ok", minutes([None, None]))],
     [Series("a", "chart-ok", [(T0 - 60, 5.0), (T0 + 3600, 5.0)])]],
    ids=["no-series", "no-points", "all-none", "out-of-range"],
)  # fmt: skip
def test_no_data_says_so(series: list[Series]) -> None:
    for draw in (charts.line_chart, charts.bar_chart):
        root = parse(draw(series, **HOUR, unit="x", title="Throughput"))
        assert root.get("aria-label", "").endswith(": no data in this range")
        assert [e.text for e in found(root, "text", "chart-empty")] == ["no data in this range"]
        assert found(root, "circle") == [] and found(root, "rect", "chart-bar") == []


@pytest.mark.parametrize(
    ("start", "end", "step"),
    [(T0, T0, 60), (T0, T0 - 1, 60), (T0, T0 + 3600, 0), (T0, T0 + 3600, -1),
     (T0, float("inf"), 60), (float("nan"), T0, 60), (T0, T0 + 86400 * 7, 1)],
)  # fmt: skip
def test_a_range_that_is_not_one_is_refused(start: float, end: float, step: float) -> None:
    with pytest.raises(ValueError):
        charts.line_chart([], start=start, end=end, step=step, unit="x", title="t")


@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_stay_text(label: str) -> None:
    def link(t: float, series: Series) -> str:
        return f"/executions?name={series.label}"

    series = [Series(label, 'chart-ok" onclick="x', minutes([1, 2])), Series("ok", "chart-bad", [])]
    for draw in (charts.line_chart, charts.bar_chart):
        svg = draw(series, **HOUR, unit=label, title=label, link=link)
        assert_inert(parse(svg), label)
    assert_inert(parse(charts.sparkline([1, 2], label=label, css=label)), label)


@given(st.text(max_size=80), st.text(max_size=20))
def test_any_label_gives_well_formed_inert_svg(label: str, css: str) -> None:
    svg = charts.line_chart([Series(label, css, minutes([1]))], **HOUR, unit="x", title=label)
    assert_inert(parse(svg), label)


def assert_inert(root: ET.Element, label: str) -> None:
    """Only the chart's own elements and attributes; the label is text wherever it went."""
    assert {tag(e) for e in root.iter()} <= TAGS
    for element in root.iter():
        assert not any(name.lower().startswith("on") for name in element.attrib), element.attrib
        assert re.fullmatch(r"[\w -]*", element.get("class", "")), element.get("class")
    clean = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", "", label)
    clean = re.sub("[\t\n\r]", " ", clean)
    if clean.strip() and len(clean) < 48:
        texts = [e.text for e in root.iter() if e.text]
        texts += [e.get("aria-label") or "" for e in root.iter()]
        assert any(clean in text for text in texts), (clean, texts)


def test_a_sparkline_has_a_bar_per_count_and_says_when() -> None:
    svg = charts.sparkline([0, 3, None, 1, 0], label="errors <x>", start=T0, step=3600)
    root = parse(svg)
    assert root.get("role") == "img"
    assert root.get("aria-label") == "errors <x>: 4 in 5 intervals, at most 3"
    assert titles(root) == ["2024-12-04 19:00 UTC: 3", "2024-12-04 21:00 UTC: 1"]
    tall, short = found(root, "rect")
    assert float(tall.get("height", 0)) > float(short.get("height", 0))


def test_an_empty_sparkline_is_a_baseline() -> None:
    root = parse(charts.sparkline([0, None, 0], label="e"))
    assert found(root, "rect") == [] and len(found(root, "line")) == 1
    assert root.get("aria-label") == "e: 0 in 3 intervals"


def test_every_chart_class_has_a_rule_in_the_stylesheet() -> None:
    css = (Path(charts.__file__).parent.parent / "static" / "stemtrace.css").read_text()
    used = {"chart", "chart-axis", "chart-unit", "chart-legend", "chart-empty", "chart-dot",
            "chart-alone", "chart-bar", "chart-spark", "chart-base", "chart-ok", "chart-bad",
            "chart-warn", "chart-run", "chart-muted", "chart-wait"}  # fmt: skip
    assert {name for name in used if not re.search(rf"\.{name}\b", css)} == set()
