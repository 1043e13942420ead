"""The dashboard is readable: every text meets WCAG AA contrast in the colours the browser
actually computes, and no page is wider than a 390 px phone. Debian's chromium, driven by
Playwright, against real agents; screenshots land in tests/artifacts/."""

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import urlencode

import pytest

pytest.importorskip("aiohttp", reason="the hub and UI need aiohttp")
playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright (pip install playwright)")

from cim.ports import free_port  # noqa: E402
from support.ui_support import CHROMIUM, Stack, hub_put, log_in, running, ui_health  # noqa: E402
from support.waiting import async_wait_until  # noqa: E402

if not os.path.exists(CHROMIUM):
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).parent / "artifacts"
PHONE = {"width": 390, "height": 844}
pytestmark = pytest.mark.nats

# WCAG 2.x: the relative luminance of each colour, the text composited over the background
# it is drawn on (every ancestor's background, from the canvas up, alpha included).
CONTRAST_JS = """
(el) => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]*)\\)/);
    if (!m) throw new Error("a colour this test cannot read: " + c);
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, below) => ({r: top.r * top.a + below.r * (1 - top.a), g: top.g * top.a + below.g * (1 - top.a),
                                 b: top.b * top.a + below.b * (1 - top.a), a: 1});
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const bg = parse(getComputedStyle(n).backgroundColor);
    if (bg.a > 0) { layers.push(bg); if (bg.a >= 1) break; }
  }
  let bg = {r: 255, g: 255, b: 255, a: 1};  // the canvas
  for (const layer of layers.reverse()) bg = over(layer, bg);
  const fg = over(parse(getComputedStyle(el).color), bg);
  const lum = (c) => ["r", "g", "b"].map((k) => {
    const v = c[k] / 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  const style = getComputedStyle(el);
  const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
  return {ratio: (hi + 0.05) / (lo + 0.05), large: size >= 24 || (bold && size >= 18.66),
          color: style.color, background: `rgb(${Math.round(bg.r)}, ${Math.round(bg.g)}, ${Math.round(bg.b)})`};
}
"""

# Every element that draws text of its own (a text node as a direct child) and can be seen,
# under AA: 4.5:1, or 3:1 for large text.
UNREADABLE_JS = """
() => {
  const contrast = CONTRAST;
  return [...document.body.querySelectorAll("*")].filter((el) => {
    if (el.closest("svg")) return false;  // the charts colour their text with fill
    if (![...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim())) return false;
    const r = el.getBoundingClientRect(), style = getComputedStyle(el);
    return r.width > 1 && r.height > 1 && r.right > 0 && style.visibility === "visible";
  }).map((el) => [el, contrast(el)]).filter(([el, c]) => c.ratio < (c.large ? 3 : 4.5)).map(([el, c]) =>
    `<${el.tagName.toLowerCase()} class="${el.className}"> ${el.textContent.trim().slice(0, 40)}: ` +
    `${c.color} on ${c.background} is ${c.ratio.toFixed(2)}:1`);
}
""".replace("CONTRAST", CONTRAST_JS.strip())

# Anything that reaches past the viewport's right edge (an element, or a run of text that
# cannot break) must sit inside a box that scrolls sideways and itself fits: `overflow:
# hidden` somewhere above it would hide the text, not fit it.
OVERFLOW_JS = """
() => {
  const doc = document.documentElement, width = doc.clientWidth, found = [];
  if (doc.scrollWidth > width) found.push(`the page is ${doc.scrollWidth} px wide in a ${width} px viewport`);
  const boxes = [...document.body.querySelectorAll("*")].map((el) => [el, el, el.getBoundingClientRect()]);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(n);
    boxes.push([n.parentElement, n, range.getBoundingClientRect()]);
  }
  for (const [parent, node, r] of boxes) {
    if (r.width === 0 || r.right <= width + 0.5) continue;
    // Up the chain of containing blocks: an absolutely placed box escapes every ancestor
    // below its offsetParent (the nearest positioned one), and their scrolling too.
    let fits = false;
    const up = (el) => getComputedStyle(el).position === "absolute" ? el.offsetParent : el.parentElement;
    for (let p = node === parent ? up(parent) : parent; p && p !== document.body; p = up(p)) {
      const ox = getComputedStyle(p).overflowX;
      if (ox === "auto" || ox === "scroll") { fits = p.getBoundingClientRect().right <= width + 0.5; break; }
    }
    if (!fits) found.push(`<${parent.tagName.toLowerCase()} class="${parent.getAttribute("class") || ""}"> ends at ` +
                          `${Math.round(r.right)} px: ` + JSON.stringify((node.textContent || "").trim().slice(0, 60)));
  }
  return found;
}
"""


@pytest.fixture
async def stack(tmp_path):
    # Webhooks to a port nobody listens on: deliveries fail and end as dead letters.
    async with running(Stack(tmp_path, webhook_url=f"http://127.0.0.1:{free_port()}/hook")) as s:
        yield s


async def new_page(browser, viewport: dict):
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    return page


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_the_pager_links_and_every_text_meet_wcag_aa_contrast(stack, browser):
    for i in range(30):
        await asyncio.to_thread(hub_put, stack, f"note {i}".encode(), title=f"note-{i}.txt", label="demo")

    async def listed_all() -> bool:  # the dashboard's unit list follows the events: it may be behind the hub
        return (await asyncio.to_thread(ui_health, stack))["units"] == 30

    await async_wait_until(listed_all, 60, what="the dashboard's unit list to hold the 30 notes")
    page = await new_page(browser, {"width": 1200, "height": 900})
    await log_in(page, stack)
    await page.goto(stack.ui_url + "/units?size=25")
    older = page.get_by_role("link", name="Older →")
    await playwright_api.expect(older).to_be_visible()
    await shot(page, "units-pager")
    normal = await older.evaluate(CONTRAST_JS)
    assert normal["ratio"] >= 4.5, f"'Older →' is {normal['color']} on {normal['background']}: {normal['ratio']:.2f}:1"
    await older.hover()
    hovered = await older.evaluate(CONTRAST_JS)
    assert hovered["ratio"] >= 4.5, f"'Older →' under the pointer: {hovered['ratio']:.2f}:1"
    await older.focus()
    focused = await older.evaluate(CONTRAST_JS)
    assert focused["ratio"] >= 4.5, f"'Older →' with the focus: {focused['ratio']:.2f}:1"

    await older.click()
    newer = page.get_by_role("link", name="← Newer")
    await playwright_api.expect(newer).to_be_visible()
    ratio = (await newer.evaluate(CONTRAST_JS))["ratio"]
    assert ratio >= 4.5, f"'← Newer' is {ratio:.2f}:1"

    # The same problem anywhere else: every text of every page.
    problems = {}
    for path in ("/units?size=25", "/units?label=demo", "/", "/pipelines", "/events", "/units/" + await first_cid(page, stack)):
        await page.goto(stack.ui_url + path)
        problems[path] = await page.evaluate(UNREADABLE_JS)
    await page.goto(stack.ui_url + "/units")
    await page.get_by_text("Upload a file").click()
    problems["/units (upload open)"] = await page.evaluate(UNREADABLE_JS)
    await page.context.clear_cookies()
    await page.goto(stack.ui_url + "/login")
    problems["/login"] = await page.evaluate(UNREADABLE_JS)
    assert not any(problems.values()), report(problems)


def report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{path}: {line}" for path, lines in found.items() for line in lines)


async def first_cid(page, stack) -> str:
    await page.goto(stack.ui_url + "/units")
    href = await page.locator("#units tbody a").first.get_attribute("href")
    return href.rsplit("/", 1)[1]


async def test_no_page_overflows_a_390px_phone(stack, browser):
    # Realistic, long, unbreakable things: CIDs, a title and labels without spaces, metadata.
    long_title = "quarterly-financial-report-for-the-northern-region-final-v2.pdf"
    original = await asyncio.to_thread(hub_put, stack, b"first draft", title=long_title,
                                       label="customer-correspondence-archive-2026")
    revision = await asyncio.to_thread(hub_put, stack, b"second draft\n" + b"x" * 400, title=long_title, parent=original,
                                       label="customer-correspondence-archive-2026",
                                       metadata=json.dumps({"https://example.org/very/long/metadata/key/without/spaces": "y" * 120}))
    for i in range(12):
        await asyncio.to_thread(hub_put, stack, f"note {i}".encode(), title=f"note-{i}-" + "z" * 50, label="demo")

    page = await new_page(browser, PHONE)
    await page.goto(stack.ui_url + "/login")
    pages: dict[str, list[str]] = {"/login": await page.evaluate(OVERFLOW_JS)}
    await shot(page, "phone-login")
    await log_in(page, stack)

    async def dead_lettered():
        await page.goto(stack.ui_url + "/pipelines")
        return await page.locator("#dead-letters tbody tr").count() > 0

    await async_wait_until(dead_lettered, 30, what="the failed webhooks' dead letters to show")

    # Search results with snippets: the pipeline agent's index.
    await asyncio.to_thread(stack.start_pipeline)

    async def found():
        await page.goto(stack.ui_url + "/units?q=draft")
        return await page.locator("#units tbody tr").count() == 2

    await async_wait_until(found, 60, what="the pipeline agent's search to find both drafts")

    checked = {
        "/": "overview", "/units": "units", "/units?size=25&label=demo": "units-label", "/units?q=draft": "search",
        f"/units/{revision}": "unit", f"/units/{original}": "unit-original", "/pipelines": "pipelines",
        "/units/bafkrei" + "q" * 70: "not-found", "/events": "events",
    }
    for path, name in checked.items():
        await page.goto(stack.ui_url + path)
        if path == "/events":
            # And an event that arrives while the page is open (drawn by app.js, not the server;
            # one that lands before the page's live events connect is sent to it all the same).
            cid = await asyncio.to_thread(hub_put, stack, b"arrives live", title="live-" + "w" * 60)
            drawn = page.locator("#live-events li", has_text=cid).filter(has_text="unit.created")
            await playwright_api.expect(drawn).to_have_count(1)
        pages[path] = await page.evaluate(OVERFLOW_JS)
        await shot(page, f"phone-{name}")
    await page.goto(stack.ui_url + "/units?" + urlencode({"size": 25}))
    await page.get_by_text("Upload a file").click()
    pages["/units (upload open)"] = await page.evaluate(OVERFLOW_JS)
    assert not any(pages.values()), report(pages)
