"""Documents built in the tests: PDFs with a real text layer (written by hand, no PDF library needed), and the bad
files the issue lists: encrypted, corrupt, scanned (no text layer), empty, and not a PDF at all."""

from __future__ import annotations

from pathlib import Path


def text_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF whose page i shows the lines pages[i] in Helvetica, one under the other: pypdf extracts them back."""
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(pages))]
    font_id = 3 + 2 * len(pages)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {len(pages)} >>".encode())
    for page_id, lines in zip(page_ids, pages):
        commands = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            commands.append(f"({escaped}) Tj T*")
        commands.append("ET")
        stream = "\n".join(commands).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {page_id + 1} 0 R "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode())
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    data = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(data)
    data += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    data += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    data += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(data))
    return path


def encrypted_pdf(path: Path, source: Path, user_password: str) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(source))
    # RC4-128: pypdf reads it without the optional 'cryptography' package, so only the password is missing
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    with path.open("wb") as handle:
        writer.write(handle)
    return path


def scanned_pdf(path: Path, pages: int = 2) -> Path:
    """Pages with no text layer at all, as a scan without OCR is."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    with path.open("wb") as handle:
        writer.write(handle)
    return path


def corrupt_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + bytes(range(256)) * 4 + b"\ntrailer <<")
    return path


def renamed_zip(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"not really a pdf" * 20)
    return path


GOOD_TEXT = [
    "Slingshot Operations Manual",
    "",
    "A checkpoint is a saved copy of the model weights and the optimizer state.",
    "The Operations Review Board (ORB) approves every change to the training cluster.",
    "Operators SHALL rotate access keys at least every 90 days.",
    "",
    "The purpose of the nightly audit is to find jobs that ran without an approved recipe.",
    "Backups are stored for 30 days in the archive before they are deleted.",
]
