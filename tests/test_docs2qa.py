"""`slingshot docs2qa`: ingestion, cleaning, chunking, both generators, duplicates, split and outputs, on files
built here and on the six NIST PDFs in ../shared/datasets/pdf_docs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import SHARED
from docs2qa_files import (
    GOOD_TEXT,
    corrupt_pdf,
    encrypted_pdf,
    renamed_zip,
    scanned_pdf,
    text_pdf,
)
from llm_server import Status

from slingshot.docs2qa.chunk import chunk_document, load_chunk_tokenizer, sentence_spans
from slingshot.docs2qa.clean import clean_document
from slingshot.docs2qa.ingest import (
    Document,
    Page,
    html_to_text,
    markdown_to_text,
    read_document,
)
from slingshot.docs2qa.offline import generate_offline
from slingshot.docs2qa.pairs import QAPair, drop_duplicate_questions, split_documents
from slingshot.docs2qa.pipeline import run_docs2qa
from slingshot.docs2qa.teacher import is_grounded, parse_pairs
from slingshot.errors import DataError, RunDirError
from slingshot.recipe import ChunkSection, CleanSection, Docs2QASection, IngestSection

PDF_DOCS = SHARED / "datasets" / "pdf_docs"
needs_pdf_docs = pytest.mark.skipif(not PDF_DOCS.is_dir(), reason="../shared/datasets/pdf_docs is absent")


@pytest.fixture(scope="module")
def tokenizer():
    return load_chunk_tokenizer(ChunkSection().tokenizer)


def document(*pages: str, name: str = "doc.pdf") -> Document:
    return Document(Path(name), name, "pdf", [Page(number, text) for number, text in enumerate(pages, start=1)])


def chunk_of(text: str, tokenizer, name: str = "doc.txt"):
    clean = clean_document(Document(Path(name), name, "text", [Page(1, text)]), CleanSection())
    return chunk_document(clean, tokenizer, ChunkSection())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ bad input


def test_each_bad_file_is_skipped_with_its_reason_and_the_batch_goes_on(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    good = text_pdf(docs / "manual.pdf", [GOOD_TEXT, ["Retention of audit logs is 365 days for every cluster."]])
    encrypted_pdf(docs / "locked.pdf", good, user_password="secret")
    corrupt_pdf(docs / "broken.pdf")
    scanned_pdf(docs / "scan.pdf")
    (docs / "empty.txt").write_bytes(b"")
    renamed_zip(docs / "archive.pdf")
    (docs / "notes.docx").write_bytes(b"PK")

    report = run_docs2qa([str(docs)], tmp_path / "out", Docs2QASection())

    reasons = {item["file"]: item["reason"] for item in report["skipped_files"]}
    assert "needs a password" in reasons["locked.pdf"]
    assert reasons["broken.pdf"].startswith("corrupt PDF")
    assert "no text layer" in reasons["scan.pdf"]
    assert reasons["empty.txt"] == "empty file"
    assert reasons["archive.pdf"].startswith("not a PDF")
    assert "unsupported file type '.docx'" in reasons["notes.docx"]
    assert report["documents"] == {"read": 1, "skipped": 6}
    assert report["pairs"]["kept"] >= 3
    assert (tmp_path / "out" / "train.jsonl").is_file()


def test_pdf_encrypted_only_against_editing_is_read(tmp_path):
    good = text_pdf(tmp_path / "manual.pdf", [GOOD_TEXT])
    opened = read_document(encrypted_pdf(tmp_path / "owner-only.pdf", good, user_password=""), "owner-only.pdf",
                           IngestSection())
    assert isinstance(opened, Document) and "checkpoint is a saved copy" in opened.pages[0].text


def test_folder_with_nothing_usable_is_one_clear_error_and_writes_nothing(tmp_path, cli):
    docs = tmp_path / "docs"
    docs.mkdir()
    scanned_pdf(docs / "scan.pdf")
    corrupt_pdf(docs / "broken.pdf")
    (docs / "empty.md").write_text("   \n", encoding="utf-8")
    code, _, err = cli("docs2qa", docs, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert "\nerror: nothing usable in" in "\n" + err and "scan.pdf: no text layer" in err and "hint:" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="input not found"):
        run_docs2qa([str(tmp_path / "missing")], None, Docs2QASection())


# ------------------------------------------------------------------------------------------------ ingest, clean


def test_html_keeps_visible_text_in_paragraphs_and_markdown_loses_its_markup():
    html = ("<html><head><title>t</title><style>p {color: red}</style></head><body><h1>Backups</h1>"
            "<p>A backup is a copy &amp; a promise.<script>alert(1)</script></p><ul><li>daily</li><li>weekly</li></ul>"
            "</body></html>")
    assert html_to_text(html) == "Backups\n\nA backup is a copy & a promise.\n\ndaily\n\nweekly"
    markdown = "---\ntitle: x\n---\n# Backups\n\nA **backup** is a [copy](http://x) of `data`.\n"
    assert markdown_to_text(markdown).split() == ["Backups", "A", "backup", "is", "a", "copy", "of", "data."]


def test_running_headers_page_numbers_and_toc_leaders_are_dropped_and_each_step_can_be_switched_off():
    words = ["tapes", "disks", "keys", "logs", "racks"]
    pages = [f"ACME HANDBOOK Version 2\nScope and purpose ........ {n}\n"
             + "\n".join(f"Line {i} of page {n} is about {words[(n + i) % 5]} and {words[i % 5]}." for i in range(8))
             + f"\n{n}" for n in range(1, 6)]
    # the document also writes "off-site" on one line, so the hyphen at a line end is part of the word
    pages[0] = pages[0].replace("Line 3", "Some infor-\nmation security and off-\nsite storage. An off-site copy. Line 3")
    clean = clean_document(document(*pages), CleanSection())
    assert "ACME HANDBOOK" not in clean.text and "......" not in clean.text
    assert "information security and off-site storage" in clean.text
    assert not any(line.strip().isdigit() for line in clean.text.splitlines())
    assert clean.removed["header_footer_lines"] + clean.removed["toc_lines"] == 10  # a repeated TOC line is both
    assert clean_document(document(*pages), CleanSection(drop_headers_footers=False)).removed["toc_lines"] == 5

    raw = clean_document(document(*pages), CleanSection(drop_headers_footers=False, drop_toc_leaders=False,
                                                        drop_page_numbers=False, dehyphenate=False))
    assert raw.text.count("ACME HANDBOOK") == 5 and "........" in raw.text and "infor- mation" in raw.text
    assert [raw.page_at(raw.text.index(f"Line 0 of page {n} ")) for n in range(1, 6)] == [1, 2, 3, 4, 5]


def test_unicode_and_whitespace_are_normalised_unless_switched_off():
    text = "The \ufb01rst \u201cclean\u201d\u00a0step\u200b  works\u00ad."
    assert clean_document(document(text), CleanSection()).text == 'The first "clean" step works.'
    assert "\ufb01" in clean_document(document(text), CleanSection(normalise_text=False)).text


# ------------------------------------------------------------------------------------------------ chunk


def test_sentences_do_not_end_at_abbreviations():
    text = "Keys are rotated, e.g. every month by Mr. Smith of the U.S. Army. Version 1.1 is final. See Fig. 3."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Keys are rotated, e.g. every month by Mr. Smith of the U.S. Army.", "Version 1.1 is final.", "See Fig. 3."]


def test_chunks_fit_the_token_budget_end_between_sentences_and_overlap(tokenizer):
    sentences = [f"Rule {i} says that operator number {i} must log every change to the cluster." for i in range(60)]
    text = "\n\n".join(" ".join(sentences[i:i + 4]) for i in range(0, 60, 4))
    settings = ChunkSection(max_tokens=64, overlap_tokens=20)
    clean = clean_document(Document(Path("a.txt"), "a.txt", "text", [Page(1, text)]), CleanSection())
    chunks = chunk_document(clean, tokenizer, settings)
    assert len(chunks) > 5
    for previous, chunk in itertools.pairwise(chunks):
        assert len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"]) <= settings.max_tokens
        assert chunk.text == clean.text[chunk.start:chunk.start + len(chunk.text)]
        assert chunk.text.endswith(".") and chunk.text[0].isupper()
        assert chunk.fresh_start > 0 and previous.text.endswith(chunk.text[:chunk.fresh_start].strip())


# ------------------------------------------------------------------------------------------------ generators


def test_offline_generator_asks_about_definitions_acronyms_purposes_and_numbers(tokenizer):
    chunks = chunk_of("\n".join(GOOD_TEXT), tokenizer)
    pairs = [pair for chunk in chunks for pair in generate_offline(chunk, limit=10)]
    asked = {pair.question: pair.answer for pair in pairs}
    assert asked["What is a checkpoint?"] == "a saved copy of the model weights and the optimizer state"
    assert asked["What does ORB stand for?"] == "Operations Review Board"
    assert asked["What is the purpose of the nightly audit?"] == "to find jobs that ran without an approved recipe"
    assert asked["Operators SHALL rotate access keys at least every how many days?"] == "90 days"
    for pair in pairs:
        assert pair.context[pair.answer_start:pair.answer_start + len(pair.answer)] == pair.answer


def test_questions_that_need_the_passage_are_not_asked(tokenizer):
    chunks = chunk_of("This is a problem for every operator. It is the main risk of the cluster. "
                      "Potentially even more critical is the loss of the keys to the archive.", tokenizer)
    assert [pair.question for chunk in chunks for pair in generate_offline(chunk, limit=10)] == []


def pair(question: str, document: str = "a.pdf") -> QAPair:
    return QAPair(question, "x", "x", document, 1, f"{document}#0", 0, "offline", "definition")


def test_exact_and_near_duplicate_questions_are_dropped():
    pairs = [pair("What is a checkpoint?"), pair("what is a  CHECKPOINT"), pair("What are checkpoints?"),
             pair("What is the purpose of a checkpoint?"), pair("What does ORB stand for?")]
    kept, dropped = drop_duplicate_questions(pairs, similarity=0.8)
    assert [p.question for p in kept] == ["What is a checkpoint?", "What is the purpose of a checkpoint?",
                                         "What does ORB stand for?"]
    assert dropped == {"duplicate_question": 1, "near_duplicate_question": 1}


def test_split_holds_out_whole_documents_seeded():
    names = [f"d{i}.pdf" for i in range(10)]
    train, held_out = split_documents(names, 0.2, seed=1)
    assert len(held_out) == 2 and not set(train) & set(held_out) and sorted(train + held_out) == names
    assert split_documents(names, 0.2, seed=1) == (train, held_out)
    assert split_documents(["only.pdf"], 0.2, seed=1) == (["only.pdf"], [])
    assert split_documents(["a", "b"], 0.01, seed=1)[1] != []  # at least one document is held out


def test_teacher_json_is_found_in_chatter_and_grounding_needs_the_chunks_words():
    assert parse_pairs('Sure! ```json\n{"pairs": [{"question": "q", "answer": "a"}]}\n```')[0] == [
        {"question": "q", "answer": "a"}]
    assert parse_pairs("[]")[0] == [] and parse_pairs("no json here")[0] is None
    context = "Backups are stored for 30 days in the archive."
    assert is_grounded("for 30 days", context, 0.6) and is_grounded("30 days in the archive", context, 0.6)
    assert not is_grounded("ninety days in the cloud vault", context, 0.6)


def test_teacher_path_counts_ungrounded_malformed_and_invalid_json_and_reruns_from_cache(tmp_path, fake_llm):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("\n".join(GOOD_TEXT), encoding="utf-8")
    (docs / "b.txt").write_text("Retention of audit logs is 365 days. The archive is in Denver.", encoding="utf-8")

    def reply(request: dict, number: int):
        passage = request["messages"][1]["content"]
        if "Denver" in passage:
            if len(request["messages"]) == 2:
                return "Here are your pairs: question one..."  # not JSON: asked again, then fixed
            return json.dumps({"pairs": [{"question": "Where is the archive?", "answer": "in Denver"}]})
        return json.dumps({"pairs": [
            {"question": "What is a checkpoint?", "answer": "a saved copy of the model weights"},
            {"question": "Who founded the company?", "answer": "Ada Lovelace in London"},  # not in the chunk
            {"question": "", "answer": "empty question"},
            {"question": "What is a checkpoint?", "answer": "a saved copy"},  # duplicate question
        ]})

    server = fake_llm(reply)
    settings = Docs2QASection(generator="teacher", pairs_per_chunk=4, eval_fraction=0.5,
                              teacher={"llm": {"base_url": server.url, "model": "scripted", "max_retries": 0}})
    report = run_docs2qa([str(docs)], tmp_path / "out", settings)
    assert report["pairs"]["rejected"] == {"ungrounded_answer": 1, "malformed_pair": 1, "duplicate_question": 1}
    assert report["pairs"]["kept"] == 2 and report["teacher"]["requests"] == 3
    assert server.requests[0]["response_format"] == {"type": "json_object"}
    rows = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "eval.jsonl")
    denver = next(row for row in rows if row["question"] == "Where is the archive?")
    assert denver["context"][denver["answer_start"]:].startswith("in Denver") and denver["generator"] == "teacher"

    sent = len(server.requests)
    again = run_docs2qa([str(docs)], tmp_path / "out", settings, overwrite=True)
    assert len(server.requests) == sent and again["teacher"]["cached"] == again["teacher"]["requests"]


def test_teacher_reply_that_stays_invalid_is_skipped_and_counted(tmp_path, fake_llm):
    (tmp_path / "a.txt").write_text("\n".join(GOOD_TEXT), encoding="utf-8")
    (tmp_path / "b.txt").write_text("The archive is in Denver and holds tapes.", encoding="utf-8")
    server = fake_llm(lambda request, number: "{not json" if "Denver" in request["messages"][1]["content"]
                      else json.dumps({"pairs": [{"question": "What is a checkpoint?", "answer": "a saved copy"}]}))
    settings = Docs2QASection(generator="teacher", teacher={"llm": {"base_url": server.url, "model": "scripted"},
                                                             "json_retries": 2, "json_mode": False})
    report = run_docs2qa([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], None, settings)
    assert report["pairs"]["rejected"] == {"invalid_json": 1} and report["pairs"]["kept"] == 1
    assert len(server.requests) == 4 and "response_format" not in server.requests[0]


def test_teacher_endpoint_failure_is_one_clear_error(tmp_path, fake_llm, cli):
    (tmp_path / "a.txt").write_text("\n".join(GOOD_TEXT), encoding="utf-8")
    server = fake_llm(lambda request, number: Status(404, "model not found"))
    code, _, err = cli("docs2qa", tmp_path / "a.txt", "--out", tmp_path / "out", "--generator", "teacher",
                       "--set", f"docs2qa.teacher.llm.base_url={server.url}")
    assert code == 2 and "does not serve model" in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ outputs, CLI


def test_cli_writes_every_format_and_never_overwrites_finished_output(tmp_path, cli):
    docs = tmp_path / "docs"
    docs.mkdir()
    text_pdf(docs / "manual.pdf", [GOOD_TEXT[:4], GOOD_TEXT[4:]])
    (docs / "policy.md").write_text("# Policy\n\nThe Data Protection Officer (DPO) reviews every new dataset.\n",
                                    encoding="utf-8")
    out = tmp_path / "qa"
    code, stdout, err = cli("docs2qa", docs, "--out", out, "--set", "docs2qa.eval_fraction=0.5")
    assert code == 0, err
    assert "pairs kept" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["documents"]["read"] == 2 and set(report["per_document"]) == {"manual.pdf", "policy.md"}
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")
    assert {"question", "answer", "context", "document", "page", "chunk_id", "answer_start"} <= set(rows[0])
    manual = {row["question"]: row for row in rows if row["document"] == "manual.pdf"}
    assert manual["What is the purpose of the nightly audit?"]["page"] == 2
    assert manual["What does ORB stand for?"]["page"] == 1
    squad = [json.loads((out / "squad" / f"{split}.json").read_text()) for split in ("train", "eval")]
    answers = [(paragraph["context"], qa["answers"][0]) for data in squad for article in data["data"]
               for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    assert len(answers) == len(rows) and squad[0]["version"] == "1.1"
    assert all(context[a["answer_start"]:].startswith(a["text"]) for context, a in answers)
    chat = read_jsonl(out / "chat" / "train.jsonl") + read_jsonl(out / "chat" / "eval.jsonl")
    assert [message["role"] for message in chat[0]["messages"]] == ["user", "assistant"]

    code, _, err = cli("docs2qa", docs, "--out", out)
    assert code == 2 and "already holds a finished docs2qa output" in err and "--overwrite" in err
    assert cli("docs2qa", docs, "--out", out, "--overwrite")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious", encoding="utf-8")
    with pytest.raises(RunDirError, match="not a docs2qa output"):
        run_docs2qa([str(docs)], tmp_path / "mine", Docs2QASection(), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_docs2qa_help_has_examples_and_recipe_keys_are_checked(cli, tmp_path):
    code, out, _ = cli("docs2qa", "--help")
    assert code == 0 and "Example" in out and "--generator" in out
    (tmp_path / "a.txt").write_text("\n".join(GOOD_TEXT), encoding="utf-8")
    code, _, err = cli("docs2qa", tmp_path / "a.txt", "--out", tmp_path / "o", "--set", "docs2qa.pairs_per_chnk=2")
    assert code == 2 and "did you mean 'docs2qa.pairs_per_chunk'" in err


# ------------------------------------------------------------------------------------------------ NIST PDFs


@needs_pdf_docs
def test_known_running_header_and_doi_footer_are_gone_from_the_framework():
    name = "NIST.CSWP.04162018.pdf"
    opened = read_document(PDF_DOCS / name, name, IngestSection())
    assert "April 16, 2018  Cybersecurity Framework Version 1.1" in opened.pages[10].text  # there before cleaning
    clean = clean_document(opened, CleanSection())
    assert "Cybersecurity Framework Version 1.1" not in clean.text
    assert "https://doi.org/10.6028/NIST.CSWP.04162018" not in clean.text
    assert "The Framework Core consists of five concurrent and continuous Functions" in clean.text
    assert clean.page_at(clean.text.index("The Framework Core consists of five")) == 10


@needs_pdf_docs
@pytest.mark.slow
def test_six_nist_pdfs_give_verbatim_pairs_with_no_document_in_both_splits(tmp_path):
    report = run_docs2qa([str(PDF_DOCS / "*.pdf")], tmp_path / "out", Docs2QASection())
    assert report["documents"] == {"read": 6, "skipped": 0} and report["pages"]["with_text"] == 429
    assert all(row["pairs_kept"] > 0 and row["chunks"] > 0 for row in report["per_document"].values())
    train, held_out = (read_jsonl(tmp_path / "out" / f"{split}.jsonl") for split in ("train", "eval"))
    assert train and held_out
    assert not {row["document"] for row in train} & {row["document"] for row in held_out}
    assert {row["document"] for row in held_out} == set(report["split"]["eval_documents"])
    for row in train + held_out:
        assert row["context"][row["answer_start"]:row["answer_start"] + len(row["answer"])] == row["answer"]
    headers = ["COMPUTER SECURITY INCIDENT HANDLING GUIDE", "NIST SP 800-190 APPLICATION CONTAINER SECURITY GUIDE",
               "Special Publication 800-30 Guide for Conducting Risk Assessments"]
    chunks = (tmp_path / "out" / "chunks.jsonl").read_text(encoding="utf-8")
    assert not any(header in chunks for header in headers)
