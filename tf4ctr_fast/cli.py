"""`tf4ctr-fast`: prepare | train | evaluate | predict | sweep | export.

With no config the commands run the embedded default: synthetic Criteo-schema data and TF4CTR (SER +
WSF) with the published Criteo settings, trained a short while. Any config key can be overridden as
`section.key=value`, e.g. `tf4ctr-fast train --config configs/frappe.yaml model.name=DNN train.seed=1`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .errors import InputError, RankLost
from .io_utils import atomic_file, temp_dir_beside
from .signals import Interrupted, exit_code_of, sigterm_interrupts
from .torchrun import launched, rank0_first

EPILOG = """\
config keys: see tf4ctr_fast/config.py (sections dataset, model, train); examples in configs/.
exit codes: 0 ok, 2 bad input (the message names the file, line or key), 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Run folders, checkpoints and resuming: docs/runs.md."""


TRAIN_DESCRIPTION = """\
Train with the FuxiCTR protocol (Adam, gradient clip 10, per-epoch validation, lr decay on plateau,
early stop, best checkpoint reloaded), then report valid/test metrics into train.out_dir.

How the embeddings are trained depends on model.backend:
  auto (default)       torchrec below, with sparse adam, for the models measured at parity with the
                       reference on CPU in one process (TF4CTR, DNN and most of the zoo:
                       docs/results.md "Sparse adam"; the run's log names the one it took), and for
                       --nproc > 1; reference everywhere else (CUDA, xDeepFM, DLF, TF4CTR-DLF,
                       train.init_order fuxictr).
  reference            every model; the embedding tables are trained by the same dense Adam as the
                       rest of the network, over whole tables, and the L2 regularizer (model.emb_reg)
                       covers the whole tables every batch: the paper's (FuxiCTR's) exact objective.
  torchrec             every model; the tables are updated inside backward by a fused sparse
                       optimizer (train.sparse_optimizer, lr train.sparse_lr) touching only
                       the rows a batch looks up: adam (CPU, one process: the rows replay the steps
                       they missed, so the result is the reference's dense Adam with the whole-table
                       L2), rowwise_adagrad or sgd (FBGEMM; CPU, CUDA, sharded), lazy_adam (Adam on
                       the looked-up rows; CPU one process, CUDA). Default "auto": adam where it runs,
                       else rowwise_adagrad; sparse_lr defaults to train.lr for the Adam kinds, 0.01
                       for the others. The L2 covers the looked-up rows (REFERENCE.md "Our decisions" 3;
                       docs/embedding.md). Adam (train.lr) trains the dense parameters. Needed for
                       --nproc > 1 (train.sharding: table_wise, column_wise, row_wise on CUDA).
"""


PREDICT_DESCRIPTION = """\
Score every row of --input with a trained model; --output gets one line per scored row, in input
order: the dataset's keep columns (raw integers), then the click probability `score`.

The input is read like the training data, by the format and the vocabularies saved with the model:
  csv_ids              a CSV with a header naming the training columns (the label may be absent)
  criteo, csv, libfm   the training files' layout (delimiter, header, columns, libfm fields); read in
                       bounded memory on every core, the rows encoded into a temporary folder beside
                       --output (removed afterwards) and scored from there
Values never seen in training (or seen fewer than min_count times) map to the OOV id. A bad row stops
the command naming file:line, unless the training schema says on_bad_row: skip (then it is dropped and
counted, and the output has fewer lines: align on a keep column). Labels: see --no-label.
With --model EXPORT_DIR (from `tf4ctr-fast export`) the rows are read the same way, encoded with the
export's vocabularies and scored by its model.pt2: the same output (docs/serving.md).
"""


EXPORT_DESCRIPTION = """\
Write a trained model as a serving folder: model.pt2 (torch.export program: ids int64 [batch, fields]
in the prepared field order, plus values and offsets per multi-valued field -> click probabilities
float32 [batch]; loads with torch.export.load, no tf4ctr_fast needed), model_aoti.pt2 (the same program
compiled by AOTInductor for this machine, for Python or C++), the vocabularies as sorted int64 keys
(vocab_keys.npy, vocab_offsets.npy) and manifest.json. Ids outside a field's table score as OOV.
Both backends export; torchrec tables are converted to plain tables. See docs/serving.md.
"""


SWEEP_DESCRIPTION = """\
Run every (configuration, seed) as its own run folder, <out>/<configuration>/seed<seed>/, each an
ordinary `train` run with train.seed and train.out_dir set (the config's and the overrides' other
keys as given); runs already finished are skipped, so the same command continues a stopped sweep.
Then write <out>/sweep.md and sweep.json: per configuration, test AUC / gAUC / logloss and valid AUC as
mean ± std over seeds, and against the baseline the difference, Welch's two-tailed t-test and the
paired t-test over the seeds both ran. Exit 1 when a run failed (the others still run).

Example: the Frappe baselines, 7 seeds, two at a time:
  tf4ctr-fast sweep --config configs/frappe.yaml --seeds 2023-2029 --grid model.name=TF4CTR,DNN \\
      --baseline model.name=DNN --jobs 2
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tf4ctr-fast", description=__doc__,
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML run config (default: the embedded synthetic demo)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=0.0005")

    with_config(sub.add_parser("prepare", help="raw files -> prepared columns (ids.npy, labels, schema.json)"))
    p_train = sub.add_parser("train", help="train (prepares the dataset first when needed)",
                             description=TRAIN_DESCRIPTION,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    with_config(p_train)
    p_train.add_argument("--nproc", type=int, metavar="N",
                         help="local data-parallel processes, the tables sharded across them (same as "
                              "train.nproc=N; needs model.backend=torchrec; gloo on CPU, one GPU each on CUDA)")
    p_train.add_argument("--head", choices=["fused", "reference"],
                         help="twin head: one fused op (default) or the op-by-op reference (same as model.head=...)")
    p_train.add_argument("--backend", choices=["auto", "reference", "torchrec"],
                         help="embedding tables (same as model.backend=...; see above)")
    p_train.add_argument("--resume", metavar="RUN_DIR",
                         help="continue the unfinished run in RUN_DIR from its last.pt (last.dcp: a multi-process "
                              "run's), exactly as if it had not stopped; its saved config is used (only "
                              "train.progress, train.num_threads, train.checkpoint_every_steps and, for a "
                              "multi-process run, train.nproc may be overridden; under torchrun the world "
                              "size is torchrun's)")
    p_train.add_argument("--overwrite", action="store_true",
                         help="replace the run already in train.out_dir (its own files only)")
    p_sweep = sub.add_parser("sweep", help="every (configuration, seed) of a grid as its own run, then a table "
                                           "of mean ± std with significance tests against a baseline",
                             description=SWEEP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    with_config(p_sweep)
    p_sweep.add_argument("--seeds", default="2023-2025", help="seeds: 2023-2029, or 2023,2025 (default 2023-2025)")
    p_sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                         help="a config key and its values; repeat for more keys (every combination runs)")
    p_sweep.add_argument("--baseline", metavar="'KEY=V ...'",
                         help="the configuration the tests compare against, as the table names it "
                              "(default: the first)")
    p_sweep.add_argument("--jobs", type=int, default=1, help="runs at once; the CPU threads are split between them")
    p_sweep.add_argument("--out", help="sweep folder (default: sweeps/<config name>)")
    p_sweep.add_argument("--table-only", action="store_true",
                         help="write sweep.md / sweep.json from the runs finished so far and run nothing")
    p_eval = sub.add_parser("evaluate", help="AUC / gAUC / logloss of a checkpoint on a prepared split")
    p_eval.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p_eval.add_argument("--data", help="prepared folder (default: the one the run was trained on)")
    p_eval.add_argument("--split", default="test")
    p_eval.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p_pred = sub.add_parser("predict", help="score a file laid out like the training data; writes the "
                            "keep columns beside the scores", description=PREDICT_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    model_source = p_pred.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--checkpoint", help="checkpoint file or run folder")
    model_source.add_argument("--model", metavar="EXPORT_DIR",
                              help="a folder written by `tf4ctr-fast export` (scores with its model.pt2 and "
                                   "vocabularies; no checkpoint needed)")
    p_pred.add_argument("--input", required=True,
                        help="file (.gz ok) in the training data's format and columns; the label may be missing")
    p_pred.add_argument("--output", required=True, help="CSV to write: the keep columns, then score")
    p_pred.add_argument("--no-label", action="store_true",
                        help="the input rows have no label (a file without a header: Criteo's test.txt, "
                             "a headerless csv, libfm rows of features only); with a header it is detected")
    p_pred.add_argument("--batch-size", type=int, default=65536, help="rows scored at once (default 65536)")
    p_pred.add_argument("--quiet", action="store_true", help="no progress bars and no summary line")
    p_pred.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda "
                        "(--checkpoint only: an export runs on the CPU)")
    p_cons = sub.add_parser("consolidate", help="a multi-process run's sharded checkpoint (best.dcp) as one "
                            "file (best.pt): whole tables, for tools that want a file (docs/distributed.md)")
    p_cons.add_argument("--checkpoint", required=True, help="sharded checkpoint folder or run folder")
    p_cons.add_argument("--output", help="file to write (default: beside it, RUN/best.dcp -> RUN/best.pt); "
                                         "an existing file is never replaced")
    p_export = sub.add_parser("export", help="a checkpoint as a serving folder: torch.export program, "
                              "AOTInductor package, vocabularies, manifest (docs/serving.md)",
                              description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p_export.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p_export.add_argument("--output", required=True, help="folder to write (replaced only if it is an export)")
    p_export.add_argument("--no-aoti", action="store_true",
                          help="skip model_aoti.pt2 (the AOTInductor compile takes a minute or more on a CPU)")
    p_export.add_argument("--aoti-tuned", action="store_true",
                          help="compile model_aoti.pt2 for latency at small batches (Inductor freezing + "
                               "max_autotune): faster at batch 1, slower from batch 16 up, twice the compile "
                               "time (docs/serving.md)")
    return parser


def cmd_prepare(args) -> Path:
    from .config import load_config
    from .data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    return prepare(cfg.dataset, progress=cfg.train.progress)


def cmd_train(args) -> dict:
    from .config import load_config
    from .data.columns import load_prepared
    from .data.prepare import ensure_prepared
    from .train.runfolder import check_run, resume_config
    from .train.trainer import train

    flags = {"train.nproc": args.nproc, "model.head": args.head, "model.backend": args.backend}
    flags = {key: value for key, value in flags.items() if value is not None}
    if args.resume:
        if args.config or flags or args.overwrite:
            raise InputError("--resume: the run goes on with the config saved in its checkpoint; drop "
                             "--config, --nproc, --head, --backend and --overwrite")
        cfg = resume_config(Path(args.resume), args.overrides)
    else:
        cfg = load_config(args.config, list(args.overrides) + [f"{key}={value}" for key, value in flags.items()])
    out_dir = cfg.resolved_out_dir()

    def check_and_prepare() -> Path:
        if os.path.lexists(out_dir) and not out_dir.is_dir():
            raise InputError(f"config key 'train.out_dir': {out_dir} is a file, not a run folder; "
                             "choose another train.out_dir")
        check_run(out_dir, overwrite=args.overwrite, resume=bool(args.resume))
        return ensure_prepared(cfg.dataset, progress=cfg.train.progress)

    launch = launched()
    if launch is None:
        data_dir = check_and_prepare()
    else:
        # torchrun started the ranks: join their process group; rank 0 checks and prepares for all
        from .distributed import init_distributed

        if cfg.train.nproc not in (1, launch.world_size) and not args.resume:   # (a resume may change it)
            raise InputError(f"config key 'train.nproc': {cfg.train.nproc}, but torchrun launched "
                             f"{launch.world_size} ranks; leave --nproc out under torchrun")
        cfg.train.nproc = launch.world_size
        init_distributed(device=cfg.train.device)
        data_dir = rank0_first(check_and_prepare)
    result = train(cfg, load_prepared(data_dir), overwrite=args.overwrite, resume=bool(args.resume))
    if result is not None:      # None: a torchrun rank other than 0
        _print_result(result)
    return result or {}


def _print_result(result: dict) -> None:
    for split in ("valid", "test"):
        m = result.get(split)
        if m:
            extra = f"  gAUC {m['gauc']:.5f}" if m.get("gauc") is not None else ""
            print(f"{split:5s}  AUC {m['auc']:.5f}{extra}  logloss {m['logloss']:.5f}  (n={m['n']})")
    print(f"best epoch {result['best_epoch']} of {result['epochs']}, wall {result['wall_time_s']:.1f} s, "
          f"train {result['train_samples_per_s']:,.0f} samples/s  -> {result['out_dir']}")


def cmd_sweep(args) -> int:
    from .sweep import sweep

    summary = sweep(args.config, args.overrides, args.seeds, args.grid, args.baseline, args.jobs, args.out,
                    table_only=args.table_only)
    return 1 if summary["failed"] else 0


def cmd_consolidate(args) -> int:
    from .train.checkpoint import consolidate

    print(consolidate(args.checkpoint, args.output))
    return 0


def cmd_evaluate(args) -> dict:
    from .data.columns import load_prepared
    from .data.fingerprint import check_same_encoding
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.trainer import evaluate, resolve_device

    device = resolve_device(args.device, "--device")
    checkpoint = resolve_checkpoint(args.checkpoint)
    model, cfg, schema = load_checkpoint(checkpoint, device)
    data = load_prepared(args.data or cfg.dataset.resolved_prepared_dir())
    check_same_encoding(checkpoint, schema, data.path, data.schema)
    if not data.has_split(args.split):
        raise InputError(f"{data.path}: no split '{args.split}'")
    metrics = evaluate(model, data.split(args.split), cfg.train.eval_batch_size, device,
                       with_group=data.group_field is not None, loader=cfg.train.loader)
    print(json.dumps({"split": args.split, **metrics}))
    return metrics


def cmd_export(args) -> Path:
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.output, aoti=not args.no_aoti, aoti_tuned=args.aoti_tuned)
    print(f"exported {args.checkpoint} -> {out}")
    return out


def cmd_predict(args) -> Path:
    from .train.checkpoint import load_checkpoint, resolve_checkpoint
    from .train.trainer import predict_proba, resolve_device

    if args.batch_size < 1:
        raise InputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.model:
        return _predict_exported(args)
    device = resolve_device(args.device, "--device")
    checkpoint = resolve_checkpoint(args.checkpoint)
    _check_output(Path(args.output), {"--input": Path(args.input), "--checkpoint": checkpoint})
    model, cfg, schema = load_checkpoint(checkpoint, device)
    with _rows_to_score(args, schema) as (rows, keep_names):
        scores = predict_proba(model, rows, args.batch_size, device, loader=cfg.train.loader)
        _write_scores(Path(args.output), keep_names, rows.keep, scores)
    _summary(args, scores)
    return Path(args.output)


def _predict_exported(args) -> Path:
    """predict --model: the rows encoded with the export's vocabularies, scored by its model.pt2."""
    from .export import ExportedModel

    exported = ExportedModel(args.model)
    _check_output(Path(args.output), {"--input": Path(args.input)})
    vocabs = exported.vocabularies()
    with _rows_to_score(args, exported.schema, vocabs) as (rows, keep_names):
        scores = exported.predict(rows, args.batch_size)
        _write_scores(Path(args.output), keep_names, rows.keep, scores)
    _summary(args, scores)
    return Path(args.output)


def _summary(args, scores: np.ndarray) -> None:
    if not args.quiet:
        print(f"wrote {len(scores)} scores to {args.output} (mean {float(np.mean(scores)):.4f})")


def _check_output(output: Path, inputs: dict[str, Path]) -> None:
    """InputError unless `output` is a file that may be replaced: not a folder, and not one of the
    command's inputs under any path (a symlink or hard link to it included)."""
    if output.is_dir():
        raise InputError(f"--output {output}: is a folder; name the CSV file to write")
    for option, path in inputs.items():
        if output.exists() and path.exists() and os.path.samefile(output, path):
            raise InputError(f"--output {output}: is the {option} file {path}; writing the scores would "
                             "replace it: choose another --output")


@contextlib.contextmanager
def _rows_to_score(args, schema: dict, vocabs: Optional[list] = None) -> Iterator[tuple[Any, list[str]]]:
    """(the input encoded as a split: .ids, .labels, .keep, .multi_valued; the keep column names).
    vocabs: every field's IntVocab (single-valued, then multi-valued) when the schema has none (an export's).

    The streaming formats are encoded into a temporary folder beside the output, removed on leaving
    the block, also on error or Ctrl-C (after a kill -9: by the next predict to that output).
    """
    from .data.columns import load_prepared
    from .data.predict_input import PREDICT_SPLIT, STREAMING_FORMATS, encode_for_predict_text

    if schema.get("options", {}).get("format") not in STREAMING_FORMATS:
        yield _csv_ids_rows(args.input, schema, vocabs), list(schema["keep_columns"])
        return
    output = Path(args.output).resolve()
    with temp_dir_beside(output, ".input") as tmp:
        encoded = load_prepared(encode_for_predict_text(args.input, schema, Path(tmp) / "encoded",
                                                        has_label=False if args.no_label else None,
                                                        progress=not args.quiet, vocabs=vocabs))
        report = encoded.schema["report"]
        if report["skipped_rows"]:
            print(f"skipped {report['skipped_rows']:,} bad rows (on_bad_row: skip in the training schema); "
                  f"first: {report['skipped_examples'][0]}", file=sys.stderr)
        yield encoded.split(PREDICT_SPLIT), encoded.keep_columns


def _csv_ids_rows(path: str, schema: dict, vocabs: Optional[list] = None):
    from .data.columns import Split
    from .data.csv_ids import encode_for_predict

    ids, keep, labels = encode_for_predict(path, schema, vocabs)
    names = list(schema["keep_columns"])
    return Split(ids=ids, labels=labels if labels is not None else np.full(len(ids), np.nan, dtype=np.float32),
                 group=None, keep=np.column_stack([keep[n] for n in names]) if names else None,
                 num_rows=len(ids))


_ROWS_PER_WRITE = 1 << 16


def _write_scores(path: Path, keep_names: list[str], keep: Optional[np.ndarray], scores: np.ndarray) -> None:
    """CSV `keep columns..., score`, atomically, a block of rows at a time. A structured array keeps
    the raw 64-bit keep values exact (a float table would round those above 2^53)."""
    row = np.dtype([*((f"k{j}", np.int64) for j in range(len(keep_names))), ("score", np.float64)])
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(",".join([*keep_names, "score"]) + "\n")
        for start in range(0, len(scores), _ROWS_PER_WRITE):
            stop = min(start + _ROWS_PER_WRITE, len(scores))
            table = np.empty(stop - start, dtype=row)
            for j in range(len(keep_names)):
                table[f"k{j}"] = keep[start:stop, j]
            table["score"] = scores[start:stop]
            np.savetxt(f, table, delimiter=",", fmt=["%d"] * len(keep_names) + ["%.6f"])


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    # argparse stops collecting key=value overrides at the first option (`train a=1 --nproc 2 b=2`
    # leaves b=2 over): they are overrides all the same.
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Per-epoch summaries go to stderr beside the progress bar, so a non-tty run still shows progress.
    # INFO for this package only: the libraries' INFO chatter (fbgemm lists every .so it loads) stays out.
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tf4ctr_fast").setLevel(logging.INFO)
    command = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate,
               "predict": cmd_predict, "sweep": cmd_sweep, "export": cmd_export,
               "consolidate": cmd_consolidate}[args.command]
    try:
        with sigterm_interrupts():
            code = command(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RankLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(_interrupted_message(e), file=sys.stderr)
        return exit_code_of(e)
    return code if isinstance(code, int) else 0


def _interrupted_message(e: KeyboardInterrupt) -> str:
    name = signal.Signals(exit_code_of(e) - 128).name
    if isinstance(e, Interrupted) and e.checkpoint:
        from .train.runfolder import resume_hint
        return (f"interrupted by {name}: {e.checkpoint} holds the run at {e.where}; continue it with "
                f"`{resume_hint(Path(e.checkpoint).parent)}`")
    return f"interrupted by {name}: nothing half-written was left behind"


if __name__ == "__main__":
    sys.exit(main())
