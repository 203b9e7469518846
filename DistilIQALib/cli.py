"""Command line: ``python -m DistilIQALib <command> ...`` (also installed as ``distiliqa``).

Errors a user can cause are printed as one line (``distiliqa: error: ...``) with a
non-zero exit code; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .errors import Cancelled, DistilIQAError, InputError, MissingPackageError
from .quality.scoring import CPU_BATCH_SIZE, DEFAULT_BATCH_SIZE

PROGRAM = "distiliqa"
BATCH_SIZE_HELP = (f"slices per forward pass (default {DEFAULT_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on the CPU, "
                   "where small batches run faster)")
PROGRESS_LINES_HELP = "print machine-readable DISTILIQA-PROGRESS lines on standard output (for Slicer)"


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line, like every other error (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _ExamplesFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped as usual; the examples epilog (text with line breaks) printed as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


#: Worked examples that end each command's --help (docs/ has a page per command; Testing/Python/test_docs.py
#: parses every ``distiliqa ...`` line here with the real parser).
EXAMPLES = {
    "score": [("score a DICOM series folder into a CSV, a plot and a JSON summary",
               "distiliqa score /data/ct_series --out scores.csv --plot scores.png --json summary.json"),
              ("a NIfTI volume of a head, on the CPU, with the region given",
               "distiliqa score head.nii.gz --region head --device cpu --out head_scores.csv")],
    "demo": [("write the sample CT to sample_ct/ and score it (scores.csv, scores.png, summary.json)",
              "distiliqa demo"),
             ("the same with another model, on the CPU",
              "distiliqa demo --weights RUN/distiliqa_student.safetensors --device cpu")],
    "info": [("what the shipped model is, and what a trained one is",
              "distiliqa info\n  distiliqa info RUN/distiliqa_student.safetensors")],
    "preprocess": [("TCIA LDCT and Projection data, labelled by SSIM to the full dose",
                    "distiliqa preprocess /data/LDCT-and-Projection-data --type tcia"),
                   ("full-dose CT degraded by simulated dose and sparse views",
                    "distiliqa preprocess /data/full_dose_ct --type simulated --output DATA")],
    "train-teacher": [("the paper's five teachers, one per fold",
                       "distiliqa train-teacher DATA --output RUN"),
                      ("one fold per GPU machine, the fast preset",
                       "distiliqa train-teacher DATA --output RUN --fold 0 --preset fast --device cuda")],
    "train-student": [("distil the teachers in RUN/teachers into one student",
                       "distiliqa train-student DATA --output RUN")],
    "evaluate": [("the student and the teachers on the test split",
                  "distiliqa evaluate DATA --weights RUN/student.safetensors RUN/teachers/*.safetensors "
                  "--output EVAL")],
    "batch": [("an archive folder into a store, with the per-series CSV and the HTML report",
               "distiliqa batch /archive --db results.sqlite --csv summary.csv --report report.html"),
              ("a PACS over DICOMweb, only the studies dated since the last run",
               "distiliqa batch --dicomweb http://pacs:8042/dicom-web --db results.sqlite --since "
               "--auth-file ~/.pacs_auth"),
              ("the exam table with the CMS CT measure's check, and its FHIR result with stable pseudonyms",
               "distiliqa batch /archive --db results.sqlite --exams exams.csv --fhir exams.fhir.json "
               "--fhir-key-env DISTILIQA_FHIR_KEY"),
              ("a site's own category mapping, or one category for every exam of the run",
               "distiliqa batch /archive --db results.sqlite --exams exams.csv --category-map site_categories.json\n"
               "  distiliqa batch /ct_chest --db chest.sqlite --exams exams.csv "
               "--exam-category \"Chest Routine Dose\"")],
    "listen": [("receive what two scanners and the PACS push to AE title DISTILIQA, over DICOM TLS",
                "distiliqa listen --port 11112 --ae-title DISTILIQA --db pushed.sqlite --allow CT1@10.20.0.5 "
                "--allow CT2@10.20.0.6 --allow PACS@10.20.1.0/24 --tls-cert receiver.pem --tls-key receiver.key "
                "--tls-ca hospital-ca.pem --retention-days 30"),
               ("the settings of a configuration file, checked and printed",
                "distiliqa listen --config /etc/distiliqa/listen.json --check"),
               ("anyone on this machine only (loopback)",
                "distiliqa listen --host 127.0.0.1 --port 11112 --ae-title DISTILIQA --db pushed.sqlite")],
    "merge": [("join the stores of two shards (batch --shard 1/2 and --shard 2/2)",
               "distiliqa merge results.sqlite part1.sqlite part2.sqlite"),
              ("the same, with the report and the exam table of the whole archive (the same as one run gives)",
               "distiliqa merge results.sqlite part1.sqlite part2.sqlite --report report.html --exams exams.csv")],
    "recipe": [("build the shipped model from scratch",
                "distiliqa recipe --output RUN"),
               ("adapt it to a site's own full-dose scans (one folder per patient, at least 3)",
                "distiliqa recipe --output SITE --sources /data/site/ct1 /data/site/ct2 /data/site/ct3")],
    "calibrate": [("refit a model's routine noise levels on the real-CT corpus",
                   "distiliqa calibrate RUN/distiliqa_student.safetensors --output calibrated.safetensors "
                   "--corpus corpus/files")],
}


def _add_examples(commands) -> None:
    for name, parser in commands.choices.items():
        if name in EXAMPLES:
            parser.formatter_class = _ExamplesFormatter
            parser.epilog = "examples:\n" + "\n".join(f"  # {what}\n  {line}" for what, line in EXAMPLES[name])


class TerminalProgress:
    """A one-line progress bar with ETA on stderr, drawn only on a terminal."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.width = width
        self.started = time.monotonic()

    def __call__(self, done: int, total: int, stage: str) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(self.width * done / total)
        elapsed = time.monotonic() - self.started
        left = f"{elapsed * (total - done) / done:5.1f} s left" if done else "          "
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{stage} [{bar}] {done}/{total} {left}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _add_score_parser(commands) -> None:
    parser = commands.add_parser("score", help="score every axial slice of one CT",
                                 description="Score every axial slice of one CT image or series.")
    parser.add_argument("input", help="DICOM series folder, volume file (.nii, .nii.gz, .nrrd, .mha, .mhd) "
                                      "or 2D image (DICOM, TIFF, PNG)")
    parser.add_argument("--weights", help="weights file (.safetensors); default: the model shipped with DistilIQA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, help=BATCH_SIZE_HELP)
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID to score when the folder holds several")
    parser.add_argument("--out", help="per-slice CSV (default: printed to standard output)")
    parser.add_argument("--plot", help="PNG plot of score and noise against z")
    parser.add_argument("--json", help="JSON summary (mean, min, worst slices, ...)")
    parser.add_argument("--force", action="store_true", help="score data that do not look like CT")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPUs")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    _add_region_argument(parser)
    parser.set_defaults(run=_run_score)


REGION_HELP = ("body region of the verdicts: auto (default: read from each slice), or head, neck, chest, abdomen for "
               "every slice")


def _add_region_argument(parser) -> None:
    from .quality.regions import REGION_CHOICES

    parser.add_argument("--region", default="auto", choices=REGION_CHOICES, help=REGION_HELP)


def _require_plots(option: str) -> None:
    """A job that was asked for a plot checks for matplotlib before it starts, not after its work is done."""
    from .io.outputs import plots_available

    if not plots_available():
        raise MissingPackageError(f"{option} needs the package matplotlib (not bundled with Slicer): "
                                  "pip install matplotlib, or leave the option out")


def _run_score(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise DistilIQAError("--batch-size must be at least 1")
    return _score_to_files(args.input, args.weights, args.device, args.batch_size, series=args.series,
                           out=args.out, plot=args.plot, json_path=args.json, force=args.force,
                           use_amp=not args.no_amp, progress_lines=args.progress_lines, region=args.region)


def _score_to_files(source, weights, device, batch_size, series=None, out=None, plot=None, json_path=None,
                    force=False, use_amp=True, progress_lines=False, region="auto") -> int:
    """Score one CT and write the CSV (standard output without ``out``), JSON summary and plot."""
    from .io.outputs import write_csv, write_json, write_plot
    from .io.reading import read_volume
    from .progress import Progress, chain, progress_line_callback
    from .quality.scoring import Scorer, verdict_line

    if progress_lines and not out:
        raise DistilIQAError("--progress-lines needs --out: the CSV and the progress lines would share standard "
                             "output")
    if plot:
        _require_plots("--plot")
    volume = read_volume(source, series_uid=series, force=force)
    scorer = Scorer(weights, device=device, batch_size=batch_size, use_amp=use_amp)
    _note(f"scoring {volume.num_slices} slice(s) of {volume.source} on {scorer.device_name} "
          f"with {scorer.info.preset} model {scorer.info.weights_id}")
    lines = progress_line_callback("score", device=scorer.device_name) if progress_lines else None
    scores = scorer.score_volume(volume, Progress(chain(TerminalProgress(), lines)), region=region)
    for warning in scores.warnings:
        _note(f"warning: {warning}")
    dose = _scanner_dose(volume)
    # "above routine" from the delivered dose where the headers give it
    scores.ssde_mgy, scores.ssde_upper_bound = dose.verdict_ssde(), bool(dose.series.get("dw_truncated"))
    write_csv(scores, out or sys.stdout, extra_rows=dose.slice_rows())
    if json_path:
        write_json(scores, json_path, extra={"scanner_dose": dose.summary()})
    if plot:
        write_plot(scores, plot)
    summary = scores.summary()
    if summary["worst_slices"]:
        worst = summary["worst_slices"][0]
        found = (f"mean score {summary['mean_score']:.4f}, worst slice {worst['slice_index']} (z {worst['z_mm']:.1f} "
                 f"mm, score {worst['score']:.4f})")
    else:
        found = "no slice has a score (no verdict: see verdict_note)"
    _note(f"{found}; {summary['num_slices']} slices in {summary['elapsed_s']:.1f} s"
          + (f"; wrote {out}" if out else ""))
    verdict = verdict_line(summary)
    if verdict:
        _note(verdict)
    _note(_dose_line(dose.summary()))
    return 0


def _dose_line(dose) -> str:
    """One line of the series' scanner dose, or why there is none."""
    parts = []
    if dose["ctdivol_mgy"] is not None:
        parts.append(f"CTDIvol {dose['ctdivol_mgy']:.2f} mGy ({dose['ctdi_phantom'] or 'phantom not stated'})")
    if dose["dw_cm"] is not None:
        parts.append(f"Dw {dose['dw_cm']:.1f} cm at mid-scan")
    if dose["ssde_mgy"] is not None:
        parts.append(f"SSDE {dose['ssde_mgy']:.2f} mGy")
    note = f" ({dose['dose_note']})" if dose["dose_note"] else ""
    return f"scanner dose: {', '.join(parts) or 'none'}{note}"


def _scanner_dose(volume):
    """The scanner's dose of a scored volume (CTDIvol from its DICOM headers, Dw, SSDE); never fails the score."""
    from .dose.series import empty_dose, volume_dose

    try:
        return volume_dose(volume)
    except Exception as error:  # a header the dose reader cannot use must not cost the user the scores
        return empty_dose(volume.num_slices, f"dose not computed ({type(error).__name__}: {error})")


def _add_demo_parser(commands) -> None:
    parser = commands.add_parser("demo", help="write a sample CT and score it (scores.csv, scores.png)",
                                 description="Write a sample CT series (a phantom with a low-dose dip) and "
                                             "score it with the shipped model.")
    parser.add_argument("--sample", default="sample_ct", help="folder for the sample DICOM series (default sample_ct)")
    parser.add_argument("--out", default="scores.csv", help="per-slice CSV (default scores.csv)")
    parser.add_argument("--plot", default="scores.png", help="plot (default scores.png)")
    parser.add_argument("--json", default="summary.json", help="JSON summary (default summary.json)")
    parser.add_argument("--weights", help="weights file; default: the model shipped with DistilIQA")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .quality.weights import resolve_weights
    from .training.sample import make_sample_ct

    folder = make_sample_ct(args.sample)
    _note(f"sample CT series: {folder}")
    resolve_weights(args.weights)  # fail early, with the reason, when no model is installed
    return _score_to_files(str(folder), args.weights, args.device, None, out=args.out, plot=args.plot,
                           json_path=args.json)


def _add_info_parser(commands) -> None:
    parser = commands.add_parser("info", help="describe a weights file (model card metadata)")
    parser.add_argument("weights", nargs="?", help="weights file; default: the shipped model")
    parser.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .quality.weights import read_info, resolve_weights

    path = resolve_weights(args.weights)
    info = read_info(path)
    windows = " + ".join(f"W{w.width_hu:g}/L{w.level_hu:g}" for w in (info.window, *info.extra_windows))
    print(f"{path}\n  id {info.weights_id}, format {info.format_version}\n  preset {info.preset}, "
          f"{info.num_outputs} output(s), input {info.input_size}x{info.input_size}, "
          f"window{'s' if info.extra_windows else ''} {windows}\n  score {info.score.name}: {info.score.description}")
    if info.artefact_margin is not None:
        print(f"  artefact margin {info.artefact_margin:g}: the network's effective noise, divided by "
              f"{1 + info.artefact_margin:g}, counts where it exceeds the measured noise")
    if info.adequacy and info.adequacy.get("bands"):
        from .quality.interpretation import adequacy_measure, band_threshold

        bands = ", ".join(f"{band['name']}" + (f" >= {band_threshold(band):g}" if band_threshold(band) is not None
                                               else "") for band in info.adequacy["bands"])
        print(f"  adequacy on the {adequacy_measure(info.adequacy).replace('_', ' ')}: {bands}")
    if info.noise_reference:
        from .quality.interpretation import band_threshold, region_references

        size = str(info.noise_reference.get("size", "water_equivalent_diameter")).replace("_", "-", 1).replace("_", " ")
        for region, reference in region_references(info.noise_reference, info.adequacy).items():
            basis = ("from published measurements" if reference.get("basis") == "literature"
                     else f"fitted on {reference.get('patients', '?')} patients")
            bands = ", ".join(f"{band['name']} >= {band_threshold(band):g}" for band in reference["bands"]
                              if band_threshold(band) is not None)
            low, high = reference.get("valid_diameter_cm", ("?", "?"))
            print(f"  {region}: dose equivalent exp({reference['intercept']:g} + {reference['per_cm']:g} D) / "
                  f"(noise^2 x thickness), D the {size} in cm ({low}-{high}), {basis}; {bands}; above routine "
                  f"> {reference.get('above_routine_from', '?')}")
    for key, value in sorted(info.provenance.items()):
        print(f"  {key}: {value}")
    return 0


def _add_preprocess_parser(commands) -> None:
    parser = commands.add_parser("preprocess", help="build a labelled dataset (train.json, test.json, ...)")
    parser.add_argument("input", help="TCIA root, LDCTIQAC2023 folder, list file (.csv/.json) or folder of "
                                      "full-dose CT (simulated)")
    parser.add_argument("--type", required=True, choices=["tcia", "ldctiqac", "list", "simulated"])
    parser.add_argument("--output", help="dataset folder for 'list' and 'simulated' (default: beside the input)")
    parser.add_argument("--doses", type=float, nargs="+", help="dose fractions to simulate "
                        "(tcia default 0.5 0.75; simulated default 1 0.75 0.5 0.3 0.2 0.1 0.05)")
    parser.add_argument("--sparse-views", type=int, nargs="*", help="view counts of sparse-view images "
                        "(simulated; default 256 128 64)")
    parser.add_argument("--slices-per-volume", type=int, default=4, help="slices taken from each source (simulated)")
    parser.add_argument("--train-cases", nargs="+", help="TCIA training cases (default: the paper's)")
    parser.add_argument("--test-cases", nargs="+", help="TCIA test cases (default: C012 C077)")
    parser.add_argument("--test-patients", nargs="*", default=[], help="held-out patients (simulated)")
    parser.add_argument("--builtin-phantoms", type=int, default=None, metavar="N",
                        help="simulated: also use the real CT slices pydicom/pydicom-data ship and N phantom slices")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (ldctiqac, list)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="simulated: where projections run (auto: a CUDA GPU when "
                        "there is one, else the CPU; cpu; cuda; cuda:N)")
    parser.set_defaults(run=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .quality.device import simulation_device
    from .training import datasets

    progress = TerminalProgress()
    source = Path(args.input)
    if not source.exists():
        raise DistilIQAError(f"no such file or folder: {source}")
    if args.type == "tcia":
        sizes = datasets.preprocess_tcia(source, args.doses or (0.5, 0.75),
                                         args.train_cases or datasets.PAPER_TRAIN_CASES,
                                         args.test_cases or datasets.PAPER_TEST_CASES, progress)
        where = source
    elif args.type == "ldctiqac":
        sizes = datasets.preprocess_ldctiqac(source, args.test_fraction, args.seed)
        where = source
    elif args.type == "list":
        where = Path(args.output or source.parent)
        sizes = datasets.preprocess_list(source, where, args.test_fraction, args.seed)
    else:
        where = Path(args.output or source.with_name(source.name + "_simulated"))
        device = simulation_device(args.device)
        slices = datasets.source_slices_from_folder(source, args.slices_per_volume) if any(source.iterdir()) else []
        if args.builtin_phantoms is not None:
            slices += datasets.builtin_sources(args.builtin_phantoms, seed=args.seed)
        if not slices:
            raise DistilIQAError(f"no CT under {source}; add --builtin-phantoms N to use the built-in sources")
        sizes = datasets.preprocess_simulated(
            slices, where, args.doses or datasets.DEFAULT_SIMULATED_DOSES,
            datasets.DEFAULT_SPARSE_VIEWS if args.sparse_views is None else args.sparse_views,
            args.test_patients, args.seed, progress, device=device)
    _note(f"dataset in {where}: {sizes[0]} training and {sizes[1]} test images")
    return 0


def _add_training_arguments(parser, preset: str, epochs: int, batch_size: int) -> None:
    parser.add_argument("data", help="dataset folder made by 'preprocess'")
    parser.add_argument("--output", required=True, help="run folder (logs, snapshots, teachers, student)")
    parser.add_argument("--preset", default=preset, help=f"model preset (default {preset})")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--purpose", default="trained", help="provenance tag stored in the weights")
    parser.add_argument("--progress-lines", action="store_true",
                        help="print machine-readable DISTILIQA-PROGRESS lines (for Slicer)")


def _training_config(args: argparse.Namespace, **extra):
    import os

    from .training.training import TrainingConfig

    if args.progress_lines:
        os.environ["DISTILIQA_PROGRESS_LINES"] = "1"
    from .quality.model import PRESETS

    if args.epochs < 1 or args.batch_size < 1:
        raise DistilIQAError("--epochs and --batch-size must be at least 1")
    if args.preset not in PRESETS:
        raise DistilIQAError(f"unknown model preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    return TrainingConfig(preset=args.preset, input_size=args.input_size, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr, optimizer=args.optimizer,
                          folds=args.folds, seed=args.seed, device=args.device, augment=not args.no_augment,
                          amp=not args.no_amp, purpose=args.purpose, **extra)


def _add_train_teacher_parser(commands) -> None:
    parser = commands.add_parser("train-teacher", help="train the teacher ensemble (one network per fold)")
    _add_training_arguments(parser, "paper", 500, 10)
    parser.add_argument("--fold", type=int, nargs="+", help="train only these folds (e.g. one per machine)")
    parser.set_defaults(run=_run_train_teacher)


def _run_train_teacher(args: argparse.Namespace) -> int:
    from .training.training import train_teachers

    teachers = train_teachers(args.data, args.output, _training_config(args), args.fold, TerminalProgress())
    _note(f"teachers: {', '.join(str(t) for t in teachers)}")
    return 0


def _add_train_student_parser(commands) -> None:
    parser = commands.add_parser("train-student", help="distil the teachers into one student")
    _add_training_arguments(parser, "fast", 200, 25)
    parser.add_argument("--distillation-weight", type=float, default=0.75)
    parser.add_argument("--gate", type=float, default=0.05,
                        help="use the teachers where their mean is within this of the label")
    parser.add_argument("--teachers", nargs="+", help="teacher weights (default: OUTPUT/teachers/*)")
    parser.set_defaults(run=_run_train_student)


def _run_train_student(args: argparse.Namespace) -> int:
    from .training.training import train_student

    config = _training_config(args, distillation_weight=args.distillation_weight, gate=args.gate)
    student = train_student(args.data, args.output, config, args.teachers, TerminalProgress())
    _note(f"student: {student}")
    return 0


def _add_evaluate_parser(commands) -> None:
    parser = commands.add_parser("evaluate", help="PLCC, SROCC, KROCC, overall, MAE, MSE on a split")
    parser.add_argument("data", help="dataset folder made by 'preprocess'")
    parser.add_argument("--weights", nargs="+", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .io.outputs import plots_available
    from .training.evaluation import evaluate

    if not plots_available():
        _note("the scatter plots are left out: matplotlib is not installed (pip install matplotlib)")
    for metrics in evaluate(args.weights, args.data, args.output, args.split, args.device):
        print(f"{metrics['model']}: PLCC {metrics['PLCC']:.4f}  SROCC {metrics['SROCC']:.4f}  "
              f"KROCC {metrics['KROCC']:.4f}  overall {metrics['overall']:.4f}  MAE {metrics['MAE']:.4f}  "
              f"MSE {metrics['MSE']:.5f}  ({metrics['images']} images)")
    return 0


def _add_batch_parser(commands) -> None:
    parser = commands.add_parser("batch", help="score every CT series of a DICOM archive into an SQLite store",
                                 description="Score every axial CT series under ROOT (a DICOM folder tree or a "
                                             "Slicer DICOM database folder). Results are written as they are made; "
                                             "a rerun resumes.")
    parser.add_argument("root", nargs="?", help="DICOM folder tree or Slicer DICOM database folder (or --dicomweb)")
    parser.add_argument("--db", required=True, help="SQLite results store (created or resumed)")
    parser.add_argument("--csv", help="per-series summary CSV")
    parser.add_argument("--report", help="self-contained HTML report")
    parser.add_argument("--shard", help="k/n: score only the k-th of n parts (default under torchrun: the rank)")
    parser.add_argument("--rescore", action="store_true", help="score series the store already has")
    parser.add_argument("--weights", help="weights file; default: the shipped model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, help=BATCH_SIZE_HELP)
    parser.add_argument("--workers", type=int, default=2,
                        help="threads decoding DICOM ahead of the model and reading the headers (default 2)")
    _add_region_argument(parser)
    _add_exam_arguments(parser)
    _add_server_arguments(parser)
    parser.set_defaults(run=_run_batch)


def _add_exam_arguments(parser) -> None:
    exams = parser.add_argument_group(
        "exams", "one row per study (DICOM study) with its dose and the CMS CT measure's inputs and check: an open "
                 "computation of the measure's inputs, not the certified measure (steward: Alara Imaging, Inc.; "
                 "non-commercial reproduction without modification only)")
    exams.add_argument("--exams", metavar="FILE", help="exam table CSV (study_uid, ..., cms_out_of_range, cms_reason)")
    exams.add_argument("--fhir", metavar="FILE", help="the measure's result: a FHIR Bundle of one Observation per "
                                                     "exam (LOINC 96914-7), patients by pseudonym")
    exams.add_argument("--exam-category", metavar="NAME", help="the measure's category (name or LOINC answer code) "
                                                              "of every exam, instead of the one derived")
    exams.add_argument("--category-map", metavar="FILE", help="a site's exam category mapping (JSON; default: the "
                                                             "shipped DistilIQALib/dose/exam_categories.json)")
    exams.add_argument("--fhir-identify-patients", action="store_true",
                       help="put the patient IDs in the FHIR Bundle instead of pseudonyms")
    exams.add_argument("--fhir-key-env", metavar="VAR", help="environment variable holding the secret that keys the "
                                                            "pseudonyms (same secret, same pseudonyms; default: a new "
                                                            "one per file)")


def _check_exam_arguments(args: argparse.Namespace) -> None:
    """Fail before any work on an unknown category, a bad mapping file or a missing key variable."""
    import os

    from .dose.categories import load_mapping
    from .dose.cms import find_category

    if args.exam_category and find_category(args.exam_category) is None:
        from .dose.cms import CATEGORIES

        raise InputError(f"--exam-category {args.exam_category!r} is not one of the measure's categories "
                         f"({'; '.join(c.name for c in CATEGORIES)})")
    load_mapping(args.category_map)
    if args.fhir_key_env and not os.environ.get(args.fhir_key_env):
        raise InputError(f"--fhir-key-env: environment variable {args.fhir_key_env} is not set")


def _write_exams(args: argparse.Namespace, store, weights_id=None) -> None:
    import os

    from .archive.exams import write_exam_outputs

    key = os.environ[args.fhir_key_env].encode() if args.fhir_key_env else None
    rows = write_exam_outputs(store, args.exams, args.fhir, weights_id, args.category_map, args.exam_category,
                              args.fhir_identify_patients, key)
    if args.exams or args.fhir:
        out = sum(row["cms_out_of_range"] == "yes" for row in rows)
        unknown = sum(row["cms_out_of_range"] == "unknown" for row in rows)
        _note(f"{len(rows)} exam(s): {out} out of the CMS CT measure's range, {unknown} unknown (an open "
              "computation of its inputs, not the certified measure)"
              + (f"; wrote {args.exams}" if args.exams else "") + (f"; wrote {args.fhir}" if args.fhir else ""))


#: The batch options that only a DICOMweb server takes (argparse destinations).
SERVER_OPTIONS = ("study_date", "since", "patient_id", "study_uid", "series_uid", "auth_env", "auth_file", "ca_bundle",
                  "no_verify_tls")


def _add_server_arguments(parser) -> None:
    server = parser.add_argument_group(
        "DICOMweb server", "score the CT series of a PACS or archive instead of ROOT: QIDO-RS finds them, WADO-RS "
                           "fetches each into a temporary folder")
    server.add_argument("--dicomweb", metavar="URL", help="the server's DICOMweb root, e.g. http://pacs:8042/dicom-web")
    server.add_argument("--study-date", metavar="FROM-TO", help="studies dated in this range (YYYYMMDD-YYYYMMDD, "
                                                                "either end may be left open)")
    server.add_argument("--since", nargs="?", const="last", metavar="YYYYMMDD",
                        help="only studies dated since the last complete run of the same query (or since a date)")
    server.add_argument("--patient-id", metavar="ID", help="only this PatientID")
    server.add_argument("--study-uid", action="append", metavar="UID", help="only this study (repeatable)")
    server.add_argument("--series-uid", action="append", metavar="UID", help="only this series (repeatable)")
    server.add_argument("--auth-env", metavar="VAR", help="environment variable holding the Authorization header "
                                                         "value or a bearer token (never printed)")
    server.add_argument("--auth-file", metavar="FILE", help="file holding the same (first line)")
    server.add_argument("--ca-bundle", metavar="FILE", help="certificate authorities to verify the server's TLS "
                                                           "certificate against (default: the system's)")
    server.add_argument("--no-verify-tls", action="store_true", help="do not verify the TLS certificate (unsafe)")
    server.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for each answer "
                                                                                 "(default 30)")
    server.add_argument("--retries", type=int, default=3, metavar="N",
                        help="tries again after a failed request, waiting 1, 2, 4 ... s (default 3)")


def _run_batch(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .archive.batch import parse_shard, run_batch, write_summary_csv
    from .archive.report import write_html_report
    from .progress import Progress
    from .quality.interpretation import lowest_adequate_score
    from .quality.scoring import Scorer

    shard = parse_shard(args.shard)
    if args.report:
        _require_plots("--report")
    _check_exam_arguments(args)
    if args.dicomweb and args.root:
        raise DistilIQAError("give a folder ROOT or --dicomweb URL, not both")
    if not args.dicomweb:
        given = [f"--{name.replace('_', '-')}" for name in SERVER_OPTIONS if getattr(args, name)]
        if given:
            raise DistilIQAError(f"{given[0]} needs --dicomweb URL")
        if not args.root:
            raise DistilIQAError("give a folder ROOT or --dicomweb URL")
        if not Path(args.root).is_dir():
            raise DistilIQAError(f"no such folder: {args.root}")
    store = Path(args.db)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.shard:
        rank = int(os.environ.get("RANK", "0"))
        shard = (rank + 1, world)
        store = store.with_name(f"{store.stem}.part{rank + 1}of{world}{store.suffix}")
    server, query = _server_request(args) if args.dicomweb else (None, None)
    scorer = Scorer(args.weights, device=args.device, batch_size=args.batch_size)
    _note(f"batch {server.name if server else args.root} -> {store} (shard {shard[0]}/{shard[1]}) on "
          f"{scorer.device_name}")
    if server:
        summary = _batch_from_server(args, server, query, store, scorer, shard)
    else:
        summary = run_batch(args.root, store, scorer, shard, args.rescore, args.workers, Progress(TerminalProgress()),
                            region=args.region)
    _note(f"{summary.scored} series scored, {summary.skipped} skipped, {summary.failed} failed, "
          f"{summary.already_done} already in the store, {summary.unreadable_files} unreadable file(s); "
          f"{summary.slices} slices in {summary.seconds:.1f} s ({summary.slices_per_second:.1f} slices/s)")
    if args.csv:
        write_summary_csv(store, args.csv)
    _write_exams(args, store, scorer.info.weights_id)
    if args.report:
        write_html_report(store, args.report, lowest_adequate_score(scorer.info.adequacy))
    return 0


def _server_request(args: argparse.Namespace):
    """The server to ask and what to ask it for, checked before the model loads."""
    from .archive.dicomweb import SeriesQuery, ServerConfig, authorization

    if args.no_verify_tls and args.ca_bundle:
        raise DistilIQAError("give --ca-bundle or --no-verify-tls, not both")
    if args.ca_bundle and not Path(args.ca_bundle).is_file():
        raise InputError(f"no such file: {args.ca_bundle}")
    verify = False if args.no_verify_tls else (args.ca_bundle or True)
    server = ServerConfig(args.dicomweb, authorization(args.auth_env, args.auth_file), verify, args.timeout,
                          args.retries)
    query = SeriesQuery(args.study_date, args.since, args.patient_id, args.study_uid or (), args.series_uid or ())
    return server, query


def _batch_from_server(args: argparse.Namespace, server, query, store, scorer, shard):
    import warnings

    from .archive.dicomweb import run_dicomweb
    from .progress import Progress

    if server.verify_tls is False:
        _note(f"warning: the TLS certificate of {server.name} is not verified (--no-verify-tls)")
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    summary = run_dicomweb(server, query, store, scorer, shard, args.rescore, args.workers,
                           Progress(TerminalProgress()))
    if summary.note:
        _note(summary.note)
    _note(f"{summary.found} CT series found on {server.name}")
    return summary


def _add_listen_parser(commands) -> None:
    from .archive.receiver_limits import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ASSOCIATIONS, DEFAULT_MIN_FREE_MB

    parser = commands.add_parser(
        "listen", help="receive CT images pushed by a scanner or PACS (DICOM C-STORE) and score each series",
        description="A DICOM C-STORE receiver: each image is written to disk before it is acknowledged; a series "
                    "is scored into the store once no image of it has come for --series-timeout seconds, and "
                    "again when more arrive. Only the senders of the allow-list may send (on loopback without "
                    "one: anyone on this machine); TLS with --tls-cert/--tls-key (and --tls-ca to require client "
                    "certificates). Answers C-ECHO; SIGTERM stops it cleanly. Settings may come from --config "
                    "(JSON); the command line overrides them and adds to its senders.")
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings: the options below without their "
                        "dashes, '-' as '_' (\"senders\": [\"AET@HOST\", ...], \"tls\": {\"certificate\", \"key\", "
                        "\"ca\"}); paths relative to the file")
    parser.add_argument("--port", type=int, help="TCP port to listen on (104 and 11112 are usual)")
    parser.add_argument("--ae-title", metavar="AET", help="this receiver's AE title")
    parser.add_argument("--db", help="SQLite results store (created or resumed)")
    parser.add_argument("--storage", help="folder for the images received (default: DB's name with _received, "
                                          "beside it)")
    parser.add_argument("--host", help="address to listen on (default: all interfaces, which needs --allow or "
                                       "--allow-any-sender)")
    parser.add_argument("--series-timeout", type=float, metavar="S",
                        help="score a series this many seconds after its last image (default 30)")
    parser.add_argument("--weights", help="weights file; default: the shipped model")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, help=BATCH_SIZE_HELP)
    access = parser.add_argument_group("who may send")
    access.add_argument("--allow", action="append", metavar="AET[@HOST]",
                        help="an allowed sender: its calling AE title, optionally with the address, network "
                             "(10.1.0.0/16) or host name it connects from (repeatable); others are rejected")
    access.add_argument("--allow-any-sender", action="store_true", default=None,
                        help="accept any calling AE title from anywhere (needed without --allow off loopback)")
    access.add_argument("--any-called-aet", action="store_true", default=None,
                        help="accept associations addressed to any AE title, not only --ae-title")
    tls = parser.add_argument_group("DICOM TLS", "with TLS on, plaintext associations are refused")
    tls.add_argument("--tls-cert", metavar="FILE", help="this receiver's certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    tls.add_argument("--tls-ca", metavar="FILE", help="certificate authority (PEM): senders must present a "
                                                      "certificate it signed")
    limits = parser.add_argument_group("disk and limits")
    limits.add_argument("--min-free", type=float, metavar="MB",
                        help=f"refuse images (out of resources) while less than this is free on the storage's "
                             f"disk (default {DEFAULT_MIN_FREE_MB:g})")
    limits.add_argument("--retention-days", type=float, metavar="N",
                        help="remove the images of series scored more than N days ago (never an unscored one; "
                             "results stay in the store)")
    limits.add_argument("--max-associations", type=int, metavar="N",
                        help=f"simultaneous associations at most (default {DEFAULT_MAX_ASSOCIATIONS})")
    limits.add_argument("--idle-timeout", type=float, metavar="S",
                        help=f"close an association silent this long (default {DEFAULT_IDLE_TIMEOUT_S:g})")
    parser.add_argument("--check", action="store_true",
                        help="print the effective settings, check them (TLS files, allow-list), and exit")
    parser.set_defaults(run=_run_listen)


#: The settings a ``listen --config`` file may hold (argparse destinations), beside "senders" and "tls".
_LISTEN_SETTINGS = ("port", "ae_title", "db", "storage", "host", "series_timeout", "weights", "device", "batch_size",
                    "allow_any_sender", "any_called_aet", "min_free", "retention_days", "max_associations",
                    "idle_timeout")


def _listen_config(path: str) -> dict:
    """The settings of a ``listen --config`` file, paths made relative to its folder."""
    import json

    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"--config {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise InputError(f"--config {path}: not JSON ({error})") from None
    if not isinstance(settings, dict):
        raise InputError(f"--config {path}: a JSON object of settings is expected")
    settings = {key.replace("-", "_"): value for key, value in settings.items()}
    unknown = sorted(set(settings) - set(_LISTEN_SETTINGS) - {"senders", "tls"})
    if unknown:
        raise InputError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    tls = settings.pop("tls", None) or {}
    if not isinstance(tls, dict) or set(tls) - {"certificate", "key", "ca"}:
        raise InputError(f"--config {path}: \"tls\" holds \"certificate\", \"key\" and \"ca\"")
    settings.update({f"tls_{'cert' if key == 'certificate' else key}": value for key, value in tls.items()})
    senders = settings.get("senders", [])
    if not isinstance(senders, list):
        raise InputError(f"--config {path}: \"senders\" is a list of \"AET\" or \"AET@HOST\"")
    settings["senders"] = [f"{item['ae_title']}@{item.get('host', '')}".rstrip("@") if isinstance(item, dict)
                           else str(item) for item in senders]
    folder = Path(path).resolve().parent
    for key in ("db", "storage", "weights", "tls_cert", "tls_key", "tls_ca"):
        if settings.get(key) is not None:
            settings[key] = str(folder / settings[key])
    return settings


def _run_listen(args: argparse.Namespace) -> int:
    from .archive import listener

    settings = _listen_config(args.config) if args.config else {}
    for key in (*_LISTEN_SETTINGS, "tls_cert", "tls_key", "tls_ca"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    for required in ("port", "ae_title", "db"):
        if settings.get(required) is None:
            option = "--" + required.replace("_", "-")
            raise InputError(f"{option} is required (on the command line or as \"{required}\" in --config)")
    listener.checked_ae_title(str(settings["ae_title"]))
    port = settings["port"]
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port")
    senders = [listener.Sender.parse(text, "--config senders" if n < len(settings.get("senders", [])) else "--allow")
               for n, text in enumerate([*settings.get("senders", []), *(args.allow or [])])]
    rules = listener.ReceiverRules(
        senders=senders, any_sender=bool(settings.get("allow_any_sender")),
        any_called_aet=bool(settings.get("any_called_aet")), tls_certificate=settings.get("tls_cert"),
        tls_key=settings.get("tls_key"), tls_ca=settings.get("tls_ca"),
        min_free_mb=float(settings.get("min_free", listener.DEFAULT_MIN_FREE_MB)),
        retention_days=None if settings.get("retention_days") is None else float(settings["retention_days"]),
        max_associations=int(settings.get("max_associations", listener.DEFAULT_MAX_ASSOCIATIONS)),
        idle_timeout_s=float(settings.get("idle_timeout", listener.DEFAULT_IDLE_TIMEOUT_S)))
    store = Path(settings["db"])
    storage = Path(settings["storage"]) if settings.get("storage") else store.with_name(f"{store.stem}_received")
    host, series_timeout = settings.get("host") or "", float(settings.get("series_timeout", 30.0))
    log = lambda line: _note(f"{PROGRAM}: listen: {line}")  # noqa: E731
    if args.check:
        listener._pynetdicom()
        receiver = listener.Receiver(storage, store, None, str(settings["ae_title"]), host, port, series_timeout,
                                     rules=rules)
        model = settings.get("weights") or "the shipped model"
        print("\n".join([*receiver.settings(), f"model: {model} on device {settings.get('device') or 'auto'}"]))
        return 0
    from .quality.scoring import Scorer

    scorer = Scorer(settings.get("weights"), device=settings.get("device") or "auto",
                    batch_size=settings.get("batch_size"))
    _note(f"scoring on {scorer.device_name} with {scorer.info.preset} model {scorer.info.weights_id}")
    receiver = listener.Receiver(storage, store, scorer, str(settings["ae_title"]), host, port, series_timeout,
                                 log=log, rules=rules)
    return listener.run_listener(receiver)


def _add_merge_parser(commands) -> None:
    parser = commands.add_parser("merge", help="merge batch stores (e.g. of shards) into one")
    parser.add_argument("output", help="store to merge into (created if missing)")
    parser.add_argument("inputs", nargs="+", help="stores to merge")
    parser.add_argument("--report", help="self-contained HTML report of the merged store")
    _add_exam_arguments(parser)
    parser.set_defaults(run=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .archive.store import ResultStore

    missing = [path for path in args.inputs if not Path(path).is_file()]
    if missing:
        raise DistilIQAError(f"no such store: {missing[0]}")
    _check_exam_arguments(args)
    with ResultStore(args.output) as store:
        for path in args.inputs:
            _note(f"{path}: {store.merge_from(path)} series rows")
    _write_exams(args, args.output)
    if args.report:
        from .archive.report import write_html_report

        write_html_report(args.output, args.report)
    return 0


def _add_recipe_parser(commands) -> None:
    parser = commands.add_parser(
        "recipe", help="build the shipped model from scratch, or adapt it to a site's own scans (--sources)")
    parser.add_argument("--output", required=True, help="run folder (resumes when it exists)")
    parser.add_argument("--size", default="absolute",
                        choices=["absolute", "default", "builtin", "tiny", "tiny-real", "tiny-absolute"],
                        help="absolute (the shipped model): the 'default' model fine-tuned onto the learned dose "
                             "equivalent, with heads and artefacts; with --sources the shipped model adapted to a "
                             "site's scans the same way; default: built-in stage then the real-CT corpus on the "
                             "paper's SSIM label; builtin: the first stage alone; tiny, tiny-real, tiny-absolute: "
                             "quick checks")
    parser.add_argument("--sources", nargs="+", type=Path, metavar="DIR",
                        help="fine-tune on these folders of a site's own full-dose scans (DICOM series, NIfTI, "
                             "NRRD; each series folder or volume file is one patient) instead of the corpus")
    parser.add_argument("--base-weights", type=Path, help="start from this model (default: the shipped model "
                        "with --sources; otherwise the stage before: 'default' for 'absolute', 'builtin' for "
                        "'default')")
    parser.add_argument("--manifest", type=Path, help="real-CT corpus manifest (default: corpus/manifest.json)")
    parser.add_argument("--corpus", type=Path, help="folder holding the corpus files (default: beside the manifest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress-lines", action="store_true",
                        help="print machine-readable DISTILIQA-PROGRESS lines (for Slicer)")
    parser.set_defaults(run=_run_recipe)


def _run_recipe(args: argparse.Namespace) -> int:
    import os

    from .training.recipe import ABSOLUTE_STAGES, REAL_STAGES, run_absolute_recipe, run_real_recipe, run_recipe

    if args.progress_lines:
        os.environ["DISTILIQA_PROGRESS_LINES"] = "1"
    progress = TerminalProgress()
    for path in [*(args.sources or []), args.base_weights, args.manifest]:
        if path is not None and not path.exists():
            raise InputError(f"no such file or folder: {path}")
    if args.size in ABSOLUTE_STAGES:
        weights = run_absolute_recipe(args.output, args.size, args.seed, args.device, progress, manifest=args.manifest,
                                      base_weights=args.base_weights, corpus_root=args.corpus, sources=args.sources)
    elif args.sources or args.base_weights or args.manifest or args.corpus:
        name = args.size if args.size in REAL_STAGES else "default"
        weights = run_real_recipe(args.output, name, args.seed, args.device, progress, manifest=args.manifest,
                                  sources=args.sources, base_weights=args.base_weights, corpus_root=args.corpus)
    else:
        weights = run_recipe(args.output, args.size, args.seed, args.device, progress)
    _note(f"model: {weights}")
    return 0


def _add_calibrate_parser(commands) -> None:
    parser = commands.add_parser(
        "calibrate", help="fit the routine full-dose noise reference (dose equivalent, adequacy) on the real-CT "
                          "corpus and write a copy of a model that uses it")
    parser.add_argument("weights", type=Path, help="model to calibrate (its network and scores are unchanged)")
    parser.add_argument("--output", type=Path, required=True, help="weights file to write")
    parser.add_argument("--manifest", type=Path, help="real-CT corpus manifest (default: corpus/manifest.json)")
    parser.add_argument("--corpus", type=Path, help="folder holding the corpus files (default: beside the manifest)")
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from .quality.weights import read_info
    from .training.recipe import calibrate_weights

    for path in (args.weights, args.manifest):
        if path is not None and not path.is_file():
            raise InputError(f"no such file: {path}")
    written = calibrate_weights(args.weights, args.output, args.manifest, args.corpus)
    regions = read_info(written).noise_reference["regions"]
    fitted = ", ".join(f"{region} {ref.get('basis', 'fitted')}"
                       + (f" on {ref['patients']} patient(s), {ref['slices']} slices" if ref.get("patients") else "")
                       for region, ref in regions.items())
    _note(f"model: {written} (routine noise levels: {fitted})")
    return 0


COMMANDS: List[Callable] = [_add_score_parser, _add_demo_parser, _add_info_parser, _add_preprocess_parser,
                            _add_train_teacher_parser, _add_train_student_parser, _add_evaluate_parser,
                            _add_batch_parser, _add_listen_parser, _add_merge_parser, _add_recipe_parser,
                            _add_calibrate_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="DistilIQA: no-reference quality of CT slices.")
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    _add_examples(commands)
    return parser


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format=f"{PROGRAM}: %(levelname)s: %(message)s")
    try:
        return args.run(args)
    except Cancelled:
        _note(f"{PROGRAM}: cancelled")
        return Cancelled.exit_code
    except KeyboardInterrupt:
        _note(f"{PROGRAM}: interrupted")
        return Cancelled.exit_code
    except DistilIQAError as error:
        if args.debug:
            raise
        _note(f"{PROGRAM}: error: {error}")
        return error.exit_code
    except (MemoryError, OSError) as error:
        if args.debug:
            raise
        _note(f"{PROGRAM}: error: {_one_line(error)}")
        return 1
    except Exception as error:  # a bug: still one line for the user, details with --debug
        if args.debug:
            raise
        _note(f"{PROGRAM}: internal error: {type(error).__name__}: {_one_line(error)} (rerun with --debug for details)")
        return 1


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

