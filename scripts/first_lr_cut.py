"""When the plateau rule first cut the learning rate, per model and backend, over every run folder
under a root (default docs/runs/frappe): is an early cut (a validation dip in the first epochs) a
property of one backend, or of the protocol?

    python scripts/first_lr_cut.py [ROOT] [--early 6]

Counts runs with at least 3 epochs; the torchrec backend's only with train.sparse_optimizer adam (the
reference's optimizer; row-wise Adagrad trains another objective). A run's first cut is the first
epoch whose record shows an lr below epoch 1's (the cut decided at the end of the epoch before)."""
import argparse
import collections
from pathlib import Path

from tf4ctr_fast.train.runlog import read_log


def first_cuts(root: Path) -> dict[tuple[str, str], list[int | None]]:
    cuts: dict[tuple[str, str], list[int | None]] = collections.defaultdict(list)
    for log in sorted(root.rglob("log.jsonl")):
        records = read_log(log)
        params = next((r for r in records if r.get("event") == "params"), None)
        epochs = [r for r in records if r.get("event") == "epoch"]
        if params is None or len(epochs) < 3:
            continue
        model, train = params["config"]["model"], params["config"]["train"]
        backend = model.get("backend", "reference")
        if backend == "torchrec" and train.get("sparse_optimizer") != "adam":
            continue
        cut = next((e["epoch"] for e in epochs if e["lr"] < epochs[0]["lr"]), None)
        cuts[(model["name"], backend)].append(cut)
    return cuts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default="docs/runs/frappe")
    ap.add_argument("--early", type=int, default=6, help="a first cut at or before this epoch is early")
    args = ap.parse_args()
    cuts = first_cuts(Path(args.root))
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    print(f"| model | backend | runs | first cut at epoch (none: 0) | early (<= {args.early}) |")
    print("|---|---|---:|---|---:|")
    for (model, backend), values in sorted(cuts.items()):
        early = sum(1 for c in values if c is not None and c <= args.early)
        totals[backend][0] += early
        totals[backend][1] += len(values)
        print(f"| {model} | {backend} | {len(values)} | {', '.join(str(c or 0) for c in sorted(values, key=lambda c: c or 0))} | {early} |")
    for backend, (early, n) in sorted(totals.items()):
        print(f"| all | {backend} | {n} | | {early} ({early / n:.0%}) |")


if __name__ == "__main__":
    main()
