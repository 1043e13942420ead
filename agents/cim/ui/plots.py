"""Small charts rendered on the server as SVG: no chart library, no CDN, nothing to run in
the browser. Every text is escaped; the markup carries a <title> and an aria-label so a
screen reader gets the numbers too."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

W, H, PAD = 600, 160, 32


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def human_bytes(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            # "768 KiB", not "768.0 KiB" (static/app.js formats sizes the same way)
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f}".removesuffix(".0") + f" {unit}"
        f /= 1024
    return f"{n} B"


def rate_chart(points: list[tuple[int, int]], title: str = "Events per minute") -> str:
    """A line over the last minutes; `points` are (unix minute, count)."""
    peak = max((c for _, c in points), default=0) or 1
    n = max(len(points) - 1, 1)
    xy = [(PAD + i * (W - 2 * PAD) / n, H - PAD - c * (H - 2 * PAD) / peak) for i, (_, c) in enumerate(points)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    total = sum(c for _, c in points)
    first = datetime.fromtimestamp(points[0][0] * 60, UTC).strftime("%H:%M") if points else ""
    last = datetime.fromtimestamp(points[-1][0] * 60, UTC).strftime("%H:%M") if points else ""
    label = f"{title}: {total} events in the last {len(points)} minutes, peak {peak} per minute"
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="currentColor" stroke-opacity="0.4"/>'
        f'<polyline points="{line}" fill="none" stroke="#2b6cb0" stroke-width="2"/>'
        f'<text x="{PAD}" y="{H - 8}" font-size="12" fill="currentColor">{escape(first)} UTC</text>'
        f'<text x="{W - PAD}" y="{H - 8}" font-size="12" text-anchor="end" fill="currentColor">{escape(last)}</text>'
        f'<text x="{PAD}" y="{PAD - 10}" font-size="12" fill="currentColor">peak {escape(_human(peak))}/min</text>'
        "</svg>"
    )


def bar_chart(values: dict[str, int], title: str = "Bytes per tier") -> str:
    items = sorted(values.items())
    peak = max((v for _, v in items), default=0) or 1
    row = 28
    height = PAD + row * max(len(items), 1)
    label = f"{title}: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in items) if items else f"{title}: nothing stored"
    bars = []
    for i, (name, v) in enumerate(items):
        y = 8 + i * row
        width = max((W - 260) * v / peak, 1)
        bars.append(
            f'<text x="0" y="{y + 15}" font-size="13" fill="currentColor">{escape(name[:28])}</text>'
            f'<rect x="160" y="{y}" width="{width:.1f}" height="18" fill="#2f855a"/>'
            f'<text x="{166 + width:.1f}" y="{y + 14}" font-size="12" fill="currentColor">{escape(human_bytes(v))}</text>'
        )
    return (
        f'<svg class="chart" viewBox="0 0 {W} {height}" role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>{''.join(bars)}</svg>"
    )
