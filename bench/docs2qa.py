"""docs2qa on the six NIST PDFs with the offline generator: pages, chunks, pairs kept per document, rejects by
reason, wall time, and 15 pairs drawn at random (seeded) for a person to read. Prints one JSON object.

    .venv/bin/python bench/docs2qa.py [--docs ../shared/datasets/pdf_docs] [--sample 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark must never reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from slingshot.docs2qa.pipeline import run_docs2qa
from slingshot.recipe import Docs2QASection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default=str(REPO.parent / "shared" / "datasets" / "pdf_docs"))
    parser.add_argument("--sample", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "qa"
        report = run_docs2qa([str(Path(args.docs) / "*.pdf")], out, Docs2QASection())
        pairs = [json.loads(line) for split in ("train", "eval")
                 for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    verbatim = sum(p["context"][p["answer_start"]:p["answer_start"] + len(p["answer"])] == p["answer"] for p in pairs)
    sample = random.Random(args.seed).sample(pairs, min(args.sample, len(pairs)))
    print(json.dumps({
        "documents": report["documents"],
        "pages": report["pages"],
        "chunks": report["chunks"],
        "pairs": report["pairs"],
        "pairs_verbatim_at_offset": f"{verbatim}/{len(pairs)}",
        "per_document": {name: {key: row[key] for key in ("pages", "chunks", "pairs_kept", "split")}
                         for name, row in report["per_document"].items()},
        "cleaning": report["cleaning"],
        "wall_time_s": report["wall_time_s"],
        "sample": [{"question": p["question"], "answer": p["answer"], "document": p["document"], "page": p["page"],
                    "kind": p["kind"]} for p in sample],
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
