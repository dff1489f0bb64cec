"""Files to pages of text with provenance: PDF (pypdf, page by page), plain text, Markdown and HTML.

A bad file never stops the batch: it becomes a `Skipped` with a reason a person can act on, and the report lists
it. Only the caller decides whether what remains is enough.
"""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from slingshot.errors import DataError
from slingshot.recipe import IngestSection

PDF_SUFFIXES = {".pdf"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}


@dataclass
class Page:
    number: int  # 1-based, as a PDF viewer counts; text files are one page per form feed
    text: str


@dataclass
class Document:
    path: Path
    name: str  # the path relative to the folder it was found in: the document's identity in every output
    kind: str  # pdf, text, markdown, html
    pages: list[Page]
    empty_pages: list[int] = field(default_factory=list)  # PDF pages without extractable text (images, blank)


@dataclass
class Skipped:
    name: str
    reason: str


def find_files(inputs: list[str], settings: IngestSection) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(path, name) of every file to read from folders, files and glob patterns, and the files passed over.

    Raises:
        DataError: an input names nothing that exists.
    """
    suffixes = {suffix.lower() for suffix in settings.suffixes}
    found: dict[Path, str] = {}
    skipped: list[Skipped] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if not file.is_file() or any(part.startswith(".") for part in file.relative_to(path).parts):
                    continue
                name = file.relative_to(path).as_posix()
                if file.suffix.lower() in suffixes:
                    found.setdefault(file.resolve(), name)
                else:
                    skipped.append(Skipped(name, f"unsupported file type '{file.suffix or '(none)'}' "
                                                 f"(read: {', '.join(sorted(suffixes))})"))
        elif path.is_file():
            if path.suffix.lower() in suffixes:
                found.setdefault(path.resolve(), path.name)
            else:
                skipped.append(Skipped(path.name, f"unsupported file type '{path.suffix or '(none)'}'"))
        elif glob.has_magic(item):
            matches = sorted(Path(match) for match in glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"no file matches '{item}'", "check the pattern; quote it so the shell does not expand it")
            for match in matches:
                if match.is_file() and match.suffix.lower() in suffixes:
                    found.setdefault(match.resolve(), match.name)
        else:
            raise DataError(f"input not found: {item}", "give a folder, a file, or a quoted glob such as 'docs/**/*.pdf'")
    return _unique_names(found), skipped


def _unique_names(found: dict[Path, str]) -> list[tuple[Path, str]]:
    # Two inputs can hold files of the same name; the full path then tells them apart.
    counts: dict[str, int] = {}
    for name in found.values():
        counts[name] = counts.get(name, 0) + 1
    return [(path, name if counts[name] == 1 else str(path)) for path, name in found.items()]


def read_document(path: Path, name: str, settings: IngestSection) -> Document | Skipped:
    """One file's pages, or why it cannot be used."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return Skipped(name, f"cannot be read ({error.strerror or error})")
    if not data.strip():
        return Skipped(name, "empty file")
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return _read_pdf(path, name, data, settings)
    if b"\x00" in data[:8192]:
        return Skipped(name, f"binary data in a '{suffix}' file (not text)")
    text = _decode(data)
    if suffix in HTML_SUFFIXES:
        pages, kind = [Page(1, html_to_text(text))], "html"
    elif suffix in MARKDOWN_SUFFIXES:
        pages, kind = [Page(1, markdown_to_text(text))], "markdown"
    else:
        # A form feed is the page break of plain-text exports (pdftotext, man pages): keep it as a page.
        pages, kind = [Page(number, part) for number, part in enumerate(text.split("\f"), start=1)], "text"
    pages = [page for page in pages if page.text.strip()]
    if not pages:
        return Skipped(name, f"no text in this {kind} file")
    return Document(path, name, kind, pages)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Old exports are often Windows-1252; latin-1 cannot fail, so nothing is dropped.
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


def _read_pdf(path: Path, name: str, data: bytes, settings: IngestSection) -> Document | Skipped:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    if b"%PDF-" not in data[:1024]:
        start = data[:16].decode("latin-1").strip()
        return Skipped(name, f"not a PDF (no %PDF header; it starts with {start!r})")
    # pypdf logs every broken cross-reference it repairs; the outcome is what matters, and it is reported.
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)
    try:
        try:
            reader = PdfReader(path, strict=False)
            if reader.is_encrypted:
                try:
                    # Many PDFs are encrypted only to restrict printing or copying: the empty password opens them.
                    opened = reader.decrypt("")
                except DependencyError:
                    return Skipped(name, "encrypted with AES; reading it needs the 'cryptography' package")
                if not opened:
                    return Skipped(name, "encrypted: needs a password (save an unencrypted copy to use it)")
            page_count = len(reader.pages)
        except (FileNotDecryptedError, PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
            return Skipped(name, f"corrupt PDF ({_first_line(error)})")
        pages: list[Page] = []
        empty: list[int] = []
        unreadable = 0
        for number in range(1, page_count + 1):
            try:
                text = reader.pages[number - 1].extract_text() or ""
            except Exception:  # noqa: BLE001 - pypdf raises many types on damaged pages; one bad page is skipped
                text, unreadable = "", unreadable + 1
            if len(text.strip()) < settings.min_chars_per_page:
                empty.append(number)
            else:
                pages.append(Page(number, text))
    finally:
        pypdf_log.setLevel(level)
    if page_count == 0:
        return Skipped(name, "corrupt PDF (no pages)")
    if not pages:
        if unreadable == page_count:
            return Skipped(name, f"corrupt PDF (none of its {page_count} pages could be read)")
        return Skipped(name, f"no text layer on any of its {page_count} pages (scanned? run OCR first, e.g. ocrmypdf)")
    return Document(path, name, "pdf", pages, empty)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0][:160] if text else type(error).__name__) or type(error).__name__


# ------------------------------------------------------------------------------------------------ HTML


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, with a blank line wherever a block element starts or ends."""

    SKIPPED = frozenset({"script", "style", "noscript", "template", "head", "svg", "nav"})
    BLOCKS = frozenset({"p", "div", "section", "article", "header", "footer", "main", "aside", "h1", "h2", "h3", "h4", "h5",
              "h6", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "blockquote", "pre", "figure", "figcaption",
              "br", "hr", "title", "form", "fieldset", "address", "details", "summary", "caption"})
    VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIPPED and tag not in self.VOID:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")
        if tag in {"td", "th"}:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED and self.skip_depth:
            self.skip_depth -= 1
        if tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        # Outside <pre>, a line break in the source is only a space: the blocks decide paragraphs.
        self.parts.append(data if self.pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    paragraphs = (part.strip() for part in re.split(r"\n\s*\n", text))
    return "\n\n".join(part for part in paragraphs if part)


# ------------------------------------------------------------------------------------------------ Markdown


def markdown_to_text(markdown: str) -> str:
    """Markdown to plain paragraphs: the words kept, the markup (headings, emphasis, links, code fences) dropped."""
    text = re.sub(r"\A---\n.*?\n---\n", "", markdown, flags=re.DOTALL)  # YAML front matter
    text = re.sub(r"^(```|~~~).*$", "", text, flags=re.MULTILINE)  # fence lines; the code inside stays as text
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images: their alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", r"\n\1\n", text, flags=re.MULTILINE)  # headings: own paragraph
    text = re.sub(r"^\s{0,3}>\s?", "", text, flags=re.MULTILINE)  # block quotes
    text = re.sub(r"^\s*([-*_]\s*){3,}$", "", text, flags=re.MULTILINE)  # horizontal rules
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?!\w)", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"<[^>\n]+>", "", text)  # inline HTML tags
    return text
