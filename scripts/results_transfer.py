"""Reproduce docs/results-transfer.{md,json} (-n<N>, -teacher<E> for other --num-images, --teacher-epochs): KRR-ST
on digits-0to4, transferred to digits-5to9 by a linear probe and by fine-tuning, beside random real source images with
teacher targets and no pre-training.

    python scripts/results_transfer.py                               # about 10 minutes on a 2-core CPU
    python scripts/results_transfer.py --iterations 10 --seeds 1 --out /tmp/smoke   # a quick smoke run

Stages: Barlow Twins teacher (experiments/buffer/digits-0to4_barlow_twins.yaml) -> KRR-ST
(experiments/krr_st/digits-0to4_n50.yaml) -> dd.eval --protocol transfer. Every stage resumes: a finished
teacher is found, the distillation continues from its checkpoint, recorded evaluation runs are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _results import cell, sh

from dd.device import describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-epochs", type=int, default=20, help="Barlow Twins epochs")
    parser.add_argument("--iterations", type=int, default=200, help="KRR-ST outer iterations")
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds per source")
    parser.add_argument("--num-images", type=int, default=50,
                        help="images KRR-ST distils (and random real images beside it); 50 keeps the old folders")
    parser.add_argument("--pretrain-epochs", type=int, default=500, help="pre-training epochs on the images")
    parser.add_argument("--linear-epochs", type=int, default=100, help="linear-probe epochs on digits-5to9")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs on all of digits-5to9")
    parser.add_argument("--few-labels", type=int, default=5,
                        help="labelled digits-5to9 images per class of the few-label setting (0: skip it)")
    parser.add_argument("--few-label-epochs", type=int, default=100,
                        help="linear-probe and fine-tuning epochs of the few-label setting")
    parser.add_argument("--targets", default="standardized",
                        help="comma-separated treatments of the teacher's representations as targets (standardized, "
                             "raw: dd.distill --method krr_st --targets); each gets its own run and rows")
    parser.add_argument("--work", default="runs/results-transfer", help="folder for the teacher, run and evaluation")
    parser.add_argument("--out", default="docs", help="where results-transfer.md/.json are written")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    start = time.perf_counter()
    buffers = str(work / "buffers")
    sh("dd.buffer", "--config", "experiments/buffer/digits-0to4_barlow_twins.yaml", "--epochs",
       str(args.teacher_epochs), "--buffer-dir", buffers)
    runs: list[dict] = []
    for targets in args.targets.split(","):
        treatment = "" if targets == "standardized" else f"-{targets}"  # the standardized runs keep their folders
        run_dir = work / f"krr_st-digits-0to4-n{args.num_images}{treatment}{teacher_suffix(args)}"
        suffix = treatment + name_suffix(args)  # of the evaluation folders
        sh("dd.distill", "--config", "experiments/krr_st/digits-0to4_n50.yaml", "--iterations", str(args.iterations),
           "--num-images", str(args.num_images), "--buffer-dir", buffers, "--run-dir", str(run_dir),
           "--targets", targets, "--resume")
        evaluate = ["dd.eval", "--protocol", "transfer", "--synset", str(run_dir / "synset"), "--target",
                    "digits-5to9", "--buffer-dir", buffers, "--runs", str(args.seeds), "--pretrain-epochs",
                    str(args.pretrain_epochs)]
        sh(*evaluate, "--linear-epochs", str(args.linear_epochs), "--finetune-epochs", str(args.finetune_epochs),
           "--out", str(work / f"eval{suffix}"))
        runs += [{**r, "targets_row": targets} for r in read_runs(work / f"eval{suffix}")]
        if args.few_labels:
            epochs = str(args.few_label_epochs)
            sh(*evaluate, "--target-ipc", str(args.few_labels), "--linear-epochs", epochs, "--finetune-epochs",
               epochs, "--out", str(work / f"eval-few-labels{suffix}"))
            runs += [{**r, "targets_row": targets} for r in read_runs(work / f"eval-few-labels{suffix}")]
    write_report(runs, out, args, time.perf_counter() - start)


def teacher_suffix(args: argparse.Namespace) -> str:
    """What a name adds for a teacher other than the first one measured (20 epochs)."""
    return "" if args.teacher_epochs == 20 else f"-teacher{args.teacher_epochs}"


def name_suffix(args: argparse.Namespace) -> str:
    """What an evaluation folder or report name adds for settings other than the first ones measured (50 images,
    a 20-epoch teacher), so their runs and reports sit beside the first ones."""
    return ("" if args.num_images == 50 else f"-n{args.num_images}") + teacher_suffix(args)


def read_runs(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())["runs"]


def write_report(runs: list[dict], out: Path, args: argparse.Namespace, seconds: float) -> None:
    machine = describe_machine()
    n = args.num_images
    flags = (f"--teacher-epochs {args.teacher_epochs} --iterations {args.iterations} --num-images {n} "
             f"--seeds {args.seeds} "
             f"--pretrain-epochs {args.pretrain_epochs} --linear-epochs {args.linear_epochs} "
             f"--finetune-epochs {args.finetune_epochs} --few-labels {args.few_labels} "
             f"--few-label-epochs {args.few_label_epochs} --targets {args.targets}")
    lines = ["## Transfer: KRR-ST on digits-0to4 → digits-5to9", "",
             f"Produced by `python scripts/results_transfer.py {flags}` on {machine} in {seconds / 60:.1f} min "
             "(this run; earlier finished stages are skipped). A Barlow Twins ConvNet teacher "
             f"({args.teacher_epochs} epochs) on the digits-0to4 training images (no labels); KRR-ST distils them "
             f"into {n} images with 128-d targets ({args.iterations} iterations, ConvNetBN pool); each source "
             f"pre-trains a fresh ConvNetBN by MSE on its targets ({args.pretrain_epochs} epochs), then on "
             "digits-5to9 a linear probe on frozen features or full fine-tuning (crop + flip), with all the "
             f"labelled training images ({args.linear_epochs} / {args.finetune_epochs} epochs) or "
             f"{args.few_labels} per class, drawn per seed ({args.few_label_epochs} epochs each). Test accuracy "
             f"in % (mean ± std over {args.seeds} seeds). random = {n} random real digits-0to4 images with the "
             "teacher's representations; none = no pre-training. targets: the teacher's representations standardised "
             "per dimension on the source training images (dd's default) or raw (the KRR-ST code's), for KRR-ST and "
             "random alike; both are reported, neither is chosen on these test numbers.", "",
             f"| protocol | target labels | targets | KRR-ST ({n} images) | random real + teacher targets | none |",
             "|---|---|---|---|---|---|"]
    for few in (False, True):
        for protocol in ("linear", "finetune"):
            for targets in args.targets.split(","):
                setting = [r for r in runs if r["protocol"] == protocol and r["targets_row"] == targets
                           and (r["recipe"]["transfer"].get("target_ipc") is not None) == few]
                if not setting:
                    continue
                row = [cell([r for r in setting if r["source"] == s]) for s in ("krr_st", "random", "none")]
                labels = f"{args.few_labels} per class" if few else "all"
                lines.append(f"| {protocol} | {labels} | {targets} | " + " | ".join(row) + " |")
    out.mkdir(parents=True, exist_ok=True)
    stem = "results-transfer" + name_suffix(args)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
