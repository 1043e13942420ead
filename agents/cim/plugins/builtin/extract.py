"""Content processing: plain text and metadata out of text, Markdown, HTML and PDF."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

from pydantic import BaseModel, ConfigDict, Field

from ... import __version__
from ...text import words
from .. import Plugin, StepContext, StepOutput


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_chars: int = Field(default=2_000_000, gt=0, description="longest text kept")


class _HtmlText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template"})
    BLOCK = frozenset({"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def from_html(raw: bytes) -> tuple[str, str]:
    p = _HtmlText()
    p.feed(raw.decode("utf-8", "replace"))
    p.close()
    text = re.sub(r"[ \t]+", " ", "".join(p.parts))
    return re.sub(r"\n\s*\n+", "\n\n", text).strip(), p.title.strip()


def from_markdown(raw: bytes) -> tuple[str, str]:
    text = raw.decode("utf-8", "replace")
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    text = re.sub(r"```[^\n]*\n", "", text)  # keep code, drop the fences
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"^\s{0,3}(#{1,6}|>|[-*+]|\d+\.)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"(\*\*|__|\*|_|`)(\S(?:.*?\S)?)\1", r"\2", text)
    return text.strip(), heading.group(1).strip() if heading else ""


def from_pdf(raw: bytes) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(raw))
    text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    title = ""
    if reader.metadata and reader.metadata.title:
        title = str(reader.metadata.title)
    return text.strip(), title


def extract(media_type: str, title: str, raw: bytes) -> tuple[str | None, str]:
    """(text, title) of the content, or (None, '') when it carries no text we can read."""
    mt = media_type.split(";")[0].strip().lower()
    if mt == "text/html" or title.lower().endswith((".html", ".htm")):
        return from_html(raw)
    if mt == "text/markdown" or title.lower().endswith(".md"):
        return from_markdown(raw)
    if mt == "application/pdf":
        return from_pdf(raw)
    if mt.startswith("text/") or mt in ("application/json", "application/xml", "application/x-yaml"):
        return raw.decode("utf-8", "replace"), ""
    return None, ""


async def run(ctx: StepContext) -> StepOutput:
    settings: Settings = ctx.settings  # type: ignore[assignment]
    text, title = extract(ctx.unit.media_type, ctx.unit.title, await ctx.content())
    if text is None:
        return StepOutput({"text_cid": None, "reason": f"no readable text in {ctx.unit.media_type}"})
    text = text[: settings.max_chars]
    cid = await ctx.store_text(text)
    return StepOutput({"text_cid": cid, "chars": len(text), "words": len(words(text)),
                       "title": title or ctx.unit.title})


plugin = Plugin(name="extract", version=__version__, kind="step", run=run, settings=Settings,
                provides={"content-processing": "1.0.0"}, description="text and metadata from text, Markdown, HTML, PDF")
