"""Charts drawn by the server as SVG: lines and stacked bars over time, and sparklines.

The pages run under ``default-src 'none'; style-src 'self'``: no script draws
these, and they carry no ``style`` attribute or element. Shapes are painted
with ``currentColor`` and a series' CSS class sets ``color`` (the chart rules
in ``static/stemtrace.css``), so a chart without its stylesheet still reads,
in the text colour.

Series labels are task, queue and worker names: text from outside. Every
element is built by :func:`_el`, which drops what XML cannot hold and escapes
every attribute value and text, so the output is always well-formed and a
label never becomes markup.

Times are UTC. The value axis starts at 0 and ends on a round number.
Durations on the axis read short (``350 ms``, ``2 s``, ``3 min``); in a
point's hover text they read as every page writes a duration
(:func:`stemtrace.server.render.duration`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from markupsafe import Markup, escape

from stemtrace.server import render

Point = tuple[float, float | None]
"""``(t, value)``: a slot's start in epoch seconds, and its value or ``None`` (no data)."""


@dataclass(frozen=True, slots=True)
class Series:
    """One line, or one layer of stacked bars."""

    label: str
    css: str
    """A CSS class that sets the series' ``color`` (``chart-ok``, ``chart-bad``, ...)."""
    points: Sequence[Point]


Link = Callable[[float, Series], str | None]
"""``link(t, series)``: where a click on that point or bar goes (the matching executions)."""

EMPTY: Final = "no data in this range"
MAX_SLOTS: Final = 5000
"""Slots a chart may have: a range and step past this is a caller's mistake, refused."""

_SVG_NS = "http://www.w3.org/2000/svg"
_WIDTH, _HEIGHT = 720, 220
_LEFT, _RIGHT, _BOTTOM = 58, 20, 22
_ROW = 16  # a legend row
_CHAR = 6.2  # the width of a character in the legend's 11 px font, about
_LABEL_MAX = 48
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
               21600, 43200, 86400, 172800, 604800, 2419200)  # fmt: skip
_DURATION_STEPS = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LINE_BREAK = re.compile(r"[\t\n\r]")
_NOT_CSS = re.compile(r"[^A-Za-z0-9_-]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def line_chart(
    series: Sequence[Series],
    *,
    start: float,
    end: float,
    step: float,
    unit: str,
    title: str,
    link: Link | None = None,
    click: str = "",
    width: int = _WIDTH,
    height: int = _HEIGHT,
) -> Markup:
    """Lines from ``start`` to ``end``, a point per ``step`` seconds, each with its hover text.

    A ``None`` value, or a slot with no point, breaks the line. A point with no
    neighbour is drawn as a dot that stays visible; the others show on hover.
    ``click`` ends the hover text of every linked point: what a click opens.
    """
    frame = _Frame.make(series, start, end, step, unit, width, height, stacked=False)
    frame.click = click
    body = [frame.line(one, link) for one in series] if frame.has_data else []
    return _svg(frame, "chart-lines", title, series, body)


def bar_chart(
    series: Sequence[Series],
    *,
    start: float,
    end: float,
    step: float,
    unit: str,
    title: str,
    link: Link | None = None,
    click: str = "",
    width: int = _WIDTH,
    height: int = _HEIGHT,
) -> Markup:
    """Stacked bars, one per ``step`` seconds, the first series at the bottom.

    Zero and ``None`` draw nothing; each segment drawn has its hover text and,
    with ``link``, opens what it counts (``click`` ends its hover text: say what).
    """
    frame = _Frame.make(series, start, end, step, unit, width, height, stacked=True)
    frame.click = click
    body = [frame.bars(one, link) for one in series] if frame.has_data else []
    return _svg(frame, "chart-bars", title, series, body)


def sparkline(
    values: Sequence[float | None],
    *,
    label: str,
    start: float | None = None,
    step: float | None = None,
    css: str = "chart-bad",
    width: int = 96,
    height: int = 20,
) -> Markup:
    """Tiny bars, no axes: how often an error came, slot by slot.

    With ``start`` and ``step``, each bar's hover text says when.
    """
    counts = [v if v is not None and math.isfinite(v) and v > 0 else 0.0 for v in values]
    most = max(counts, default=0.0)
    slot = width / max(len(counts), 1)
    bars = []
    for i, value in enumerate(counts):
        if value > 0:
            tall = max(value / most * (height - 1), 1.0)
            when = "" if start is None or step is None else _when(start + i * step, step) + ": "
            box = {"x": i * slot, "y": height - tall, "width": max(slot - 1, 0.5), "height": tall}
            bars.append(_el("rect", box, _el("title", {}, when + _number(value))))
    summary = f"{_cut(label)}: {_number(sum(counts))} in {len(counts)} intervals"
    if most:
        summary += f", at most {_number(most)}"
    base = {"x1": 0, "x2": width, "y1": height - 0.5, "y2": height - 0.5}
    return _el(
        "svg",
        {"xmlns": _SVG_NS, "class": f"chart-spark {_css(css)}", "viewBox": f"0 0 {width} {height}",
         "width": width, "height": height, "role": "img", "aria-label": summary},
        _el("line", {"class": "chart-base", **base, "stroke": "currentColor"}),
        _el("g", {"fill": "currentColor"}, *bars),
    )  # fmt: skip


def format_value(value: float, unit: str) -> str:
    """A value as a point's hover text says it: ``12 tasks/min``, ``4.5%``, ``2.10 s``."""
    if unit == "s":
        return render.duration(value)
    if unit == "%":
        return f"{value:.1f}%"
    return f"{_number(value)} {unit}".rstrip()


def tick_label(value: float, unit: str) -> str:
    """A value as the axis says it, short and round: ``350 ms``, ``2 s``, ``1.5k``, ``25%``."""
    if unit == "s":
        return _short_duration(value)
    if unit == "%":
        return f"{_g(value)}%"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{_g(value / size)}{suffix}"
    return _g(value)


def value_ticks(most: float, unit: str) -> list[float]:
    """Round ticks from 0 to at least ``most``, about four steps; the last is the axis' top.

    Steps are 1, 2, 2.5 or 5 times a power of ten; durations past a minute step
    by whole minutes or hours instead (a tick at 100 s would read "1.67 min").
    Nothing above zero (below a microsecond, a millionth) gives an axis from 0 to 1.
    """
    if not math.isfinite(most) or most < 1e-6:
        most = 1.0
    raw = most / 4
    if unit == "s" and raw >= 60:
        step = next((s for s in _DURATION_STEPS if s >= raw), 86400 * _nice(raw / 86400))
    else:
        step = _nice(raw)
    top = math.ceil(most / step - 1e-9)
    return [float(f"{i * step:.12g}") for i in range(top + 1)]


def time_ticks(start: float, end: float, most: int = 6) -> list[tuple[float, str]]:
    """Round UTC times from ``start`` to ``end``, at most ``most``, with their labels.

    ``HH:MM`` within a day; a date (``4 Dec``) at midnight on longer ranges,
    and for every tick when they are a day or more apart.
    """
    span = end - start
    every = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1])
    ticks: list[tuple[float, str]] = []
    t = float(math.ceil(start / every) * every)
    while t <= end and len(ticks) <= most:
        ticks.append((t, _tick_time(t, every, span)))
        t += every
    return ticks


@dataclass(slots=True)
class _Frame:
    """Where things go: the plot's box, the scales, the legend's places."""

    start: float
    end: float
    step: float
    unit: str
    width: int
    height: int
    ticks: list[float]
    legend: list[tuple[float, float]]
    has_data: bool
    base: dict[int, float] = field(default_factory=dict)
    """How high each slot's stack is so far, as :meth:`bars` draws layer after layer."""
    click: str = ""
    """What a click on a linked point or bar opens, said at the end of its hover text."""

    @classmethod
    def make(
        cls,
        series: Sequence[Series],
        start: float,
        end: float,
        step: float,
        unit: str,
        width: int,
        height: int,
        *,
        stacked: bool,
    ) -> _Frame:
        if not all(math.isfinite(v) for v in (start, end, step)) or step <= 0 or end <= start:
            raise ValueError(f"not a time range: {start} to {end} by {step}")
        if (end - start) / step > MAX_SLOTS:
            raise ValueError(f"{(end - start) / step:.0f} slots, more than {MAX_SLOTS}")
        sums: dict[int, float] = {}
        most = 0.0
        for one in series:
            for i, (_, value) in _slots(one, start, end, step).items():
                if value is not None:
                    sums[i] = sums.get(i, 0.0) + max(value, 0.0)
                    most = max(most, sums[i] if stacked else value)
        legend = _legend_places(series, width)
        ticks = value_ticks(most, unit)
        return cls(start, end, step, unit, width, height, ticks, legend, has_data=bool(sums))

    @property
    def top(self) -> float:
        return max((y for _, y in self.legend), default=0.0) + _ROW + 10

    @property
    def bottom(self) -> float:
        return self.height - _BOTTOM

    def x(self, t: float) -> float:
        return _LEFT + (t - self.start) / (self.end - self.start) * (self.width - _LEFT - _RIGHT)

    def y(self, value: float) -> float:
        share = min(max(value, 0.0) / self.ticks[-1], 1.0)
        return self.bottom - share * (self.bottom - self.top)

    def line(self, one: Series, link: Link | None) -> Markup:
        runs: list[list[tuple[float, float]]] = []
        last: float | None = None
        for t, value in sorted(_slots(one, self.start, self.end, self.step).values()):
            if value is None:
                last = None
                continue
            if last is None or t - last > 1.5 * self.step:
                runs.append([])
            runs[-1].append((t, value))
            last = t
        middle = self.step / 2
        path = " ".join(
            "M" + " L".join(f"{_n(self.x(t + middle))},{_n(self.y(v))}" for t, v in run)
            for run in runs
        )
        dots = [
            self.dot(one, t, value, alone=len(run) == 1, href=_href(link, t, one))
            for run in runs
            for t, value in run
        ]
        return _el(
            "g",
            {"class": f"chart-series {_css(one.css)}"},
            _el("path", {"class": "chart-line", "d": path, "fill": "none",
                         "stroke": "currentColor", "stroke-width": 1.5}),
            _el("g", {"fill": "currentColor"}, *dots),
        )  # fmt: skip

    def dot(self, one: Series, t: float, value: float, *, alone: bool, href: str | None) -> Markup:
        place = {"cx": self.x(t + self.step / 2), "cy": self.y(value), "r": 3}
        css = "chart-dot chart-alone" if alone else "chart-dot"
        title = _el("title", {}, self.hover(one, t, value, linked=href is not None))
        return _wrap(_el("circle", {"class": css, **place}, title), href)

    def bars(self, one: Series, link: Link | None) -> Markup:
        """One layer of the stack, on the layers drawn before it."""
        slot = self.x(self.start + self.step) - self.x(self.start)
        gap = min(1.0, slot * 0.15)
        rects = []
        for i, (t, value) in sorted(_slots(one, self.start, self.end, self.step).items()):
            if value is None or value <= 0:
                continue
            below = self.base.get(i, 0.0)
            self.base[i] = below + value
            top, bottom = self.y(below + value), self.y(below)
            box = {"class": "chart-bar", "x": self.x(t) + gap, "y": top,
                   "width": max(slot - 2 * gap, 0.5), "height": max(bottom - top, 0.5)}  # fmt: skip
            href = _href(link, t, one)
            title = _el("title", {}, self.hover(one, t, value, linked=href is not None))
            rects.append(_wrap(_el("rect", box, title), href))
        return _el("g", {"class": f"chart-series {_css(one.css)}", "fill": "currentColor"}, *rects)

    def hover(self, one: Series, t: float, value: float, *, linked: bool = False) -> str:
        text = f"{_cut(one.label)} · {_when(t, self.step)} · {format_value(value, self.unit)}"
        return f"{text} · {_cut(self.click)}" if linked and self.click else text


def _svg(
    frame: _Frame, kind: str, title: str, series: Sequence[Series], body: list[Markup]
) -> Markup:
    span = f"{_when(frame.start, frame.step)} to {_when(frame.end, frame.step)}"
    labels = ", ".join(_cut(one.label) for one in series) if frame.has_data else EMPTY
    parts = [_legend(frame, series), _value_axis(frame), _time_axis(frame), *body]
    if not frame.has_data:
        middle = {"x": (_LEFT + frame.width - _RIGHT) / 2, "y": (frame.top + frame.bottom) / 2}
        parts.append(
            _el("text", {"class": "chart-empty", **middle, "text-anchor": "middle"}, EMPTY)
        )
    return _el(
        "svg",
        {"xmlns": _SVG_NS, "class": f"chart {kind}", "viewBox": f"0 0 {frame.width} {frame.height}",
         "role": "img", "aria-label": f"{_cut(title)}, {span}: {labels}"},
        *parts,
    )  # fmt: skip


def _legend(frame: _Frame, series: Sequence[Series]) -> Markup:
    keys = [
        _el("g", {"class": f"chart-key {_css(one.css)}"},
            _el("rect", {"x": x, "y": y + 2, "width": 10, "height": 10, "fill": "currentColor"}),
            _el("text", {"x": x + 14, "y": y + 11}, _cut(one.label, _LABEL_MAX)))
        for one, (x, y) in zip(series, frame.legend, strict=True)
    ]  # fmt: skip
    unit = "" if frame.unit in ("s", "%") else _cut(frame.unit, 12)
    return _el(
        "g",
        {"class": "chart-legend"},
        _el("text", {"class": "chart-unit", "x": 4, "y": 13}, unit),
        *keys,
    )


def _legend_places(series: Sequence[Series], width: int) -> list[tuple[float, float]]:
    places, x, y = [], float(_LEFT), 0.0
    for one in series:
        size = 14 + _CHAR * len(_cut(one.label, _LABEL_MAX)) + 16
        if x > _LEFT and x + size > width - _RIGHT:
            x, y = float(_LEFT), y + _ROW
        places.append((x, y))
        x += size
    return places


def _value_axis(frame: _Frame) -> Markup:
    marks = []
    for value in frame.ticks if frame.has_data else [0.0]:
        y = frame.y(value)
        grid = {"x1": _LEFT, "x2": frame.width - _RIGHT, "y1": y, "y2": y}
        label = {"x": _LEFT - 5, "y": y + 3.5, "text-anchor": "end"}
        marks.append(_el("line", {**grid, "stroke": "currentColor"}))
        marks.append(_el("text", label, tick_label(value, frame.unit)))
    return _el("g", {"class": "chart-axis chart-values"}, *marks)


def _time_axis(frame: _Frame) -> Markup:
    marks = []
    for t, text in time_ticks(frame.start, frame.end):
        x = frame.x(t)
        mark = {"x1": x, "x2": x, "y1": frame.bottom, "y2": frame.bottom + 4}
        marks.append(_el("line", {**mark, "stroke": "currentColor"}))
        marks.append(_el("text", {"x": x, "y": frame.bottom + 15, "text-anchor": "middle"}, text))
    return _el("g", {"class": "chart-axis chart-times"}, *marks)


def _href(link: Link | None, t: float, one: Series) -> str | None:
    """Where the point or bar links to, when it does and the place is safe."""
    href = link(t, one) if link is not None else None
    return href if href and _safe_href(href) else None


def _wrap(shape: Markup, href: str | None) -> Markup:
    return shape if href is None else _el("a", {"href": href}, shape)


def _safe_href(href: str) -> bool:
    """A path, a query or an http(s) URL: never ``javascript:``, ``data:`` or ``//host``."""
    if href.startswith(("/", "?", "#")):
        return not href.startswith("//")
    return href.startswith(("http://", "https://"))


def _slots(one: Series, start: float, end: float, step: float) -> dict[int, Point]:
    """The series' points in the range by slot; a later point of a slot replaces an earlier."""
    return {int((t - start) / step + 1e-9): (t, v) for t, v in _in_range(one, start, end)}


def _in_range(one: Series, start: float, end: float) -> Iterator[Point]:
    for t, value in sorted(one.points, key=lambda point: point[0]):
        if math.isfinite(t) and start <= t < end:
            yield t, (value if value is not None and math.isfinite(value) else None)


def _nice(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _tick_time(t: float, every: int, span: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    if every >= 86400 or (span >= 86400 and moment.hour == moment.minute == 0):
        return f"{moment.day} {_MONTHS[moment.month - 1]}"
    return moment.strftime("%H:%M:%S" if every < 60 else "%H:%M")


def _when(t: float, step: float) -> str:
    try:
        moment = datetime.fromtimestamp(t, UTC)
    except (ValueError, OverflowError, OSError):
        return "not a time"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if step < 60 else "%Y-%m-%d %H:%M UTC")


def _short_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for size, suffix in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s"), (0.001, "ms")):
        if seconds >= size:
            return f"{_g(seconds / size)} {suffix}"
    return f"{_g(seconds * 1e6)} µs"


def _g(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _n(value: float) -> str:
    """A coordinate: two decimals at most, no exponent."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _el(tag: str, attributes: Mapping[str, object], *children: str) -> Markup:
    """One element: every attribute value and text child cleaned and escaped; markup kept.

    ``tag`` and the attribute names are this module's own; values and text are
    escaped here (plain string building: a chart has thousands of elements).
    """
    attrs = "".join(
        f' {name}="{_n(v) if isinstance(v, float) else escape(_xml(str(v)))}"'
        for name, v in attributes.items()
    )
    inner = "".join(c if isinstance(c, Markup) else escape(_xml(c)) for c in children)
    if not inner and tag != "text":
        return Markup(f"<{tag}{attrs}/>")
    return Markup(f"<{tag}{attrs}>{inner}</{tag}>")


def _xml(text: str) -> str:
    """Text without the characters XML 1.0 cannot hold (NUL, most controls, lone surrogates)."""
    return _NOT_XML.sub("", text)


def _cut(text: str, limit: int = 200) -> str:
    """A label: one line of XML-safe text, at most ``limit`` characters."""
    text = _LINE_BREAK.sub(" ", _xml(str(text)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _css(name: str) -> str:
    return _NOT_CSS.sub("", name)[:40]
