"""`tf4ctr-fast`: prepare | train | evaluate | predict.

With no config the commands run the embedded default: synthetic Criteo-schema data and TF4CTR (SER +
WSF) with the published Criteo settings, trained a short while. Any config key can be overridden as
`section.key=value`, e.g. `tf4ctr-fast train --config configs/frappe.yaml model.name=DNN train.seed=1`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import InputError

EPILOG = """\
config keys: see tf4ctr_fast/config.py (sections dataset, model, train); examples in configs/.
exit codes: 0 ok, 2 bad input (the message names the file, line or key), 130 interrupted."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf4ctr-fast", description=__doc__,
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML run config (default: the embedded synthetic demo)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=0.0005")

    with_config(sub.add_parser("prepare", help="raw files -> prepared columns (ids.npy, labels, schema.json)"))
    p_train = sub.add_parser("train", help="train (prepares the dataset first when needed)")
    with_config(p_train)
    p_eval = sub.add_parser("evaluate", help="AUC / gAUC / logloss of a checkpoint on a prepared split")
    p_eval.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p_eval.add_argument("--data", help="prepared folder (default: the one the run was trained on)")
    p_eval.add_argument("--split", default="test")
    p_pred = sub.add_parser("predict", help="score a CSV; writes its id columns beside the scores")
    p_pred.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p_pred.add_argument("--input", required=True, help="CSV (.gz ok) with the training columns")
    p_pred.add_argument("--output", required=True, help="CSV to write")
    p_pred.add_argument("--batch-size", type=int, default=65536)
    return parser


def cmd_prepare(args) -> Path:
    from .config import load_config
    from .data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    return prepare(cfg.dataset)


def cmd_train(args) -> dict:
    from .config import load_config
    from .data.columns import load_prepared
    from .data.prepare import prepare
    from .train.trainer import train

    cfg = load_config(args.config, args.overrides)
    data_dir = cfg.dataset.resolved_prepared_dir()
    if not (data_dir / "schema.json").exists():
        print(f"preparing {cfg.dataset.name} into {data_dir} (no prepared folder yet)", flush=True)
        prepare(cfg.dataset)
    result = train(cfg, load_prepared(data_dir))
    _print_result(result)
    return result


def _print_result(result: dict) -> None:
    for split in ("valid", "test"):
        m = result.get(split)
        if m:
            extra = f"  gAUC {m['gauc']:.5f}" if m.get("gauc") is not None else ""
            print(f"{split:5s}  AUC {m['auc']:.5f}{extra}  logloss {m['logloss']:.5f}  (n={m['n']})")
    print(f"best epoch {result['best_epoch']} of {result['epochs']}, wall {result['wall_time_s']:.1f} s, "
          f"train {result['train_samples_per_s']:,.0f} samples/s  -> {result['out_dir']}")


def cmd_evaluate(args) -> dict:
    from .data.columns import load_prepared
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.trainer import evaluate

    model, cfg, _schema = load_checkpoint(resolve_checkpoint(args.checkpoint))
    data = load_prepared(args.data or cfg.dataset.resolved_prepared_dir())
    if not data.has_split(args.split):
        raise InputError(f"{args.data or cfg.dataset.resolved_prepared_dir()}: no split '{args.split}'")
    metrics = evaluate(model, data.split(args.split), cfg.train.eval_batch_size, "cpu",
                       with_group=data.group_field is not None)
    print(json.dumps({"split": args.split, **metrics}))
    return metrics


def cmd_predict(args) -> Path:
    import numpy as np

    from .data.csv_ids import encode_for_predict
    from .io_utils import atomic_file
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.trainer import predict_proba

    model, _cfg, schema = load_checkpoint(resolve_checkpoint(args.checkpoint))
    ids, keep, _labels = encode_for_predict(args.input, schema)
    scores = predict_proba(model, ids, args.batch_size, "cpu")
    names = list(keep)
    table = np.column_stack([*(keep[n] for n in names), scores]) if names else scores[:, None]
    with atomic_file(args.output) as tmp:
        np.savetxt(tmp, table, delimiter=",", header=",".join([*names, "score"]), comments="",
                   fmt=["%d"] * len(names) + ["%.6f"])
    print(f"wrote {len(scores)} scores to {args.output} (mean {float(np.mean(scores)):.4f})")
    return Path(args.output)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Per-epoch summaries go to stderr beside the progress bar, so a non-tty run still shows progress.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = {"prepare": cmd_prepare, "train": cmd_train,
               "evaluate": cmd_evaluate, "predict": cmd_predict}[args.command]
    try:
        command(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
