"""The SST-2 learning curve: `slingshot curve` on the whole SST-2 train set (67,349 rows), scored on the dev set.

Equivalent to `slingshot curve RECIPE --sizes ... --methods ... --seeds ...` on a recipe that points at
../shared/datasets/sst2; the sweep folder (points, curve.json/.md/.png) is bench/out/curve_sst2 unless --out is
given. Rerunning the same command resumes an interrupted sweep. Prints curve.json.

    .venv/bin/python bench/curve_sst2.py                                        # 8 .. all, fewshot + full, 3 seeds
    .venv/bin/python bench/curve_sst2.py --sizes 8,16,32,64,256,1000 --seeds 2 --total-size-seeds 1

The `all` point trains on 67k rows (about 10-15 minutes per method and seed on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SST2_DIR, emit, log, model_dir, warn_if_busy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,16,32,64,256,1000,all")
    parser.add_argument("--methods", default="fewshot,full")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--total-size-seeds", type=int, default=1, help="seeds for sizes beyond 64 per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "curve_sst2"))
    args = parser.parse_args()

    from slingshot.curve import run_curve
    from slingshot.recipe import recipe_from_dict

    warn_if_busy()
    recipe = recipe_from_dict({
        "name": "sst2", "model": {"name": str(model_dir())},
        "data": {"train": str(SST2_DIR / "train.tsv"), "eval": str(SST2_DIR / "dev.tsv"), "text_column": "sentence",
                 "label_names": ["negative", "positive"]},
        # full fine-tuning keeps one setting at every size (lr 5e-5, 3 epochs: 20 epochs would take hours at 67k
        # rows); at 8 per class that is only 3 optimizer steps, so its smallest points show an undertrained model.
        "train": {"threads": args.threads, "lr": 5e-5, "epochs": 3},
        "curve": {"sizes": [int(s) if s.isdigit() else s for s in args.sizes.split(",")],
                  "methods": args.methods.split(","), "seeds": args.seeds,
                  "total_size_seeds": args.total_size_seeds},
    })

    def on_event(kind: str, info: dict) -> None:
        if kind == "plan":
            log(f"{info['done']} of {info['total']} points already finished")
        elif kind == "done":
            log(f"{info['method']} {info['size']} seed {info['seed']}: {info['metric']:.4f} "
                f"({info['train_time_s']:.0f} s; load average {os.getloadavg()[0]:.1f})")

    result = run_curve(recipe, out=args.out, on_event=on_event)
    if result.interrupted:
        sys.exit("interrupted: rerun the same command to resume")
    emit({**result.summary, "folder": str(result.folder), "plot": str(result.folder / "curve.png")})


if __name__ == "__main__":
    main()
