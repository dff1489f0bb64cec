"""`slingshot compare` on SST-2 dev: the fine-tuned all-MiniLM-L6-v2 from the foundation benchmark against the
majority class and zero-shot embeddings, with a published gpt-3.5-turbo row for reference.

    .venv/bin/python bench/compare_sst2.py [RUN] > bench/results/compare_sst2.json

RUN defaults to bench/results/bench-sst2-full (written by bench/sst2_full.py). The comparison is rewritten in the
run folder (comparison.json/.md); this script prints the report plus machine facts as JSON to stdout.
"""

from __future__ import annotations

import sys
import time

from common import REPO, emit, log, machine_info

from slingshot.compare import compare_run
from slingshot.recipe import CompareSection


def main() -> None:
    run = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "bench" / "results" / "bench-sst2-full")
    options = CompareSection(
        baselines=["majority", "embedding"],
        label_descriptions={"negative": "a negative, critical movie review",
                            "positive": "a positive, favourable movie review"},
        published=[{"name": "gpt-3.5-turbo zero-shot", "value": 93.7, "source": "DAMO-NLP-SG/SSTuning (SST-2 dev)"}],
    )
    start = time.perf_counter()
    comparison = compare_run(run, options, force=True, log=log)
    log(comparison.markdown)
    emit({"benchmark": "compare_sst2", "run": run, "wall_s": round(time.perf_counter() - start, 1),
          "machine": machine_info(), **comparison.report})


if __name__ == "__main__":
    main()
