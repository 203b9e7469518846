"""Scoring speed on this machine, in one run: the network of every preset, each stage of the scoring path, and
the ``score`` command end to end, with the ratios to the ``paper`` preset and to the network's own time.

1. **Networks**: each preset runs in its own fresh process (so peak memory is its own): the model is built, one
   batch warms up, then batches are timed for at least ``--seconds``.
2. **Stages**: a fresh process reads a ``--slices``-slice 512x512 DICOM series (the demo's phantom with CT noise
   texture, 0.7 mm pixels) and scores it with the shipped model as ``score`` does, timing each stage of the real
   path: reading, region features, noise index, patient size, windowing, the network, region labels and
   verdicts, the scanner's dose from the headers, the CSV and JSON outputs (and the plot, which ``score`` makes
   only with ``--plot``). The whole path per slice is also compared with the network's time inside that same
   process: a ratio whose two sides share the minute they were measured in.
3. **End to end**: ``python -m DistilIQALib score SERIES --device DEVICE --out CSV --json JSON`` on that series and
   on a 2-slice one, in ``--repeats`` rounds that also time the shipped network again, the best of each kept.
   The difference over the extra slices is the per-slice cost a user waits for, start-up (imports, loading the
   model) left out. It is compared with the shipped network's own best time and with the ``paper`` preset's.

4. **Before and after** (``--against CHECKOUT``, a worktree of an earlier commit): ``score`` end to end with that
   checkout's code and this one's, alternating within each round, so both meet the same spells of a busy machine.

    .venv/bin/python benchmarks/speed.py [--seconds 3] [--slices 100] [--repeats 3] [--device cpu]
                                         [--presets paper,fast,tiny,shipped] [--against CHECKOUT] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL_SLICES = 2


def measure(preset: str, batch_size: int, seconds: float, device_name: str) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from DistilIQALib.quality.device import describe_device, resolve_device
    from DistilIQALib.quality.model import PRESETS, build_model

    device = resolve_device(device_name)
    torch.manual_seed(0)
    if preset == "shipped":  # the shipped file itself: its preset, outputs and input channels (windows)
        from DistilIQALib.quality.weights import default_weights_path, load_weights

        model, info = load_weights(default_weights_path(), device)
        channels = info.architecture.input_channels
    else:
        model, channels = build_model(PRESETS[preset], 5).to(device).eval(), 1
    batch = torch.rand(batch_size, channels, 512, 512, device=device)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(batch)
        slices = 0
        started = time.perf_counter()
        while True:
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            slices += batch_size
            elapsed = time.perf_counter() - started
            if elapsed >= seconds and slices >= 2 * batch_size:
                break
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "preset": preset,
        "input_channels": channels,
        "device": describe_device(device),
        "ms_per_slice": 1000.0 * elapsed / slices,
        "slices_timed": slices,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_mib": peak_kib / 1024.0,
        "scoring_rss_increase_mib": (peak_kib - baseline_kib) / 1024.0,
    }
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


#: The stages of the scoring path, in order: (name, where it is looked up, the function's name there).
STAGES = (
    ("reading", "DistilIQALib.io.reading", "read_volume"),
    ("to tensor", "DistilIQALib.quality.scoring", "hu_to_tensor"),
    ("regions", "DistilIQALib.quality.scoring", "region_features"),
    ("noise index", "DistilIQALib.quality.scoring", "global_noise_index"),
    ("patient size", "DistilIQALib.quality.scoring", "size_for_reference"),
    ("windowing", "DistilIQALib.quality.scoring", "prepare_batch"),
    ("network", None, None),
    ("region labels", "DistilIQALib.quality.scoring", "detect_regions"),
    ("verdicts", "DistilIQALib.quality.results", "region_verdicts"),
    ("scanner dose", None, None),
    ("outputs", None, None),
)
#: Stages inside ``Scorer.score_volume`` (the scoring loop); reading, the scanner's dose and outputs are outside it.
IN_LOOP = {name for name, _, _ in STAGES} - {"reading", "scanner dose", "outputs"}


def write_series(folder: Path, slices: int) -> Path:
    """The demo's phantom with CT noise texture as a ``slices``-slice 512x512 DICOM series."""
    sys.path.insert(0, str(ROOT))
    from DistilIQALib.training.sample import make_sample_ct

    return make_sample_ct(folder, num_slices=slices, dip_slices=(slices // 3, slices // 3 + max(1, slices // 5)))


def measure_stages(series: str, device_name: str) -> dict:
    """Seconds spent in each stage of scoring ``series`` as ``score`` does it, timed in the real path."""
    import importlib

    import torch

    sys.path.insert(0, str(ROOT))
    from DistilIQALib.dose.series import volume_dose
    from DistilIQALib.io.outputs import write_csv, write_json, write_plot
    from DistilIQALib.quality.scoring import Scorer

    spent = {name: 0.0 for name, _, _ in STAGES}
    device = torch.device("cpu")

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(name, function):
        def run(*args, **kwargs):
            synchronise()
            started = time.perf_counter()
            result = function(*args, **kwargs)
            synchronise()
            spent[name] += time.perf_counter() - started
            return result
        return run

    from DistilIQALib.io import reading

    reading.read_volume(series)  # start-up (the DICOM dictionaries, the files into the page cache), untimed
    for name, module_name, attribute in STAGES:
        if module_name:
            module = importlib.import_module(module_name)
            setattr(module, attribute, timed(name, getattr(module, attribute)))
    volume = reading.read_volume(series)
    scorer = Scorer(None, device=device_name)
    device = scorer.device
    scorer.model = timed("network", scorer.model)
    started = time.perf_counter()
    scores = scorer.score_volume(volume)
    loop_s = time.perf_counter() - started
    import pydicom  # noqa: F401  (start-up, as the end-to-end measure leaves it out)

    started = time.perf_counter()  # as `score` does after the loop: CTDIvol from the headers, Dw, SSDE
    dose = volume_dose(volume)
    scores.ssde_mgy = dose.verdict_ssde()
    spent["scanner dose"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        write_csv(scores, Path(folder) / "scores.csv", extra_rows=dose.slice_rows())
        write_json(scores, Path(folder) / "summary.json", extra={"scanner_dose": dose.summary()})
        scores.summary()
        spent["outputs"] = time.perf_counter() - started
        started = time.perf_counter()
        write_plot(scores, Path(folder) / "plot.png")
        plot_s = time.perf_counter() - started
    return {"slices": volume.num_slices, "device": scorer.device_name, "batch_size": scorer.batch_size,
            "stages_s": spent, "loop_s": loop_s, "plot_s": plot_s,
            "adequacy": {label: scores.adequacy.count(label) for label in set(scores.adequacy)},
            "regions": {region: scores.region.count(region) for region in set(scores.region)}}


def time_score_command(series: Path, device_name: str, checkout: Path = ROOT) -> float:
    """Wall-clock seconds of ``python -m DistilIQALib score`` on ``series``, in a fresh process, with the
    ``DistilIQALib`` of ``checkout`` (this one by default)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(checkout)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "DistilIQALib", "score", str(series), "--device", device_name,
                        "--out", str(Path(folder) / "scores.csv"), "--json", str(Path(folder) / "summary.json")],
                       check=True, capture_output=True, cwd=checkout, env=environment)
        return time.perf_counter() - started


def compare_checkouts(other: Path, large: Path, small: Path, slices: int, device_name: str, repeats: int) -> dict:
    """``score`` end to end per slice with this checkout's code and ``other``'s, alternating in each round (which
    goes first alternates too), the best of ``repeats`` rounds of each: a before-and-after in one run."""
    best = {"this": [float("inf")] * 2, "other": [float("inf")] * 2}
    for round_ in range(repeats):
        order = [("this", ROOT), ("other", other)]
        for name, checkout in order[::-1] if round_ % 2 else order:
            for n, series in enumerate((large, small)):
                best[name][n] = min(best[name][n], time_score_command(series, device_name, checkout))
    per_slice = {name: 1000.0 * (large_s - small_s) / (slices - SMALL_SLICES)
                 for name, (large_s, small_s) in best.items()}
    print(f"\nthis checkout against {other} (`score` end to end, alternating, best of {repeats} rounds): "
          f"{per_slice['this']:.1f} against {per_slice['other']:.1f} ms per slice, "
          f"{per_slice['this'] / per_slice['other']:.2f}x its time")
    return {"this_ms_per_slice": per_slice["this"], "other_ms_per_slice": per_slice["other"],
            "other": str(other)}


def child(args: argparse.Namespace, *extra: str) -> dict:
    output = subprocess.run([sys.executable, __file__, *extra, "--batch-size", str(args.batch_size), "--seconds",
                             str(args.seconds), "--device", args.device],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_networks(results: list, batch_size: int) -> dict:
    paper = next((r for r in results if r["preset"] == "paper"), results[0])
    print(f"networks: {results[0]['device']}, batch size {batch_size}, 512x512 slices, 5 outputs "
          "(shipped: the shipped file's own)")
    print(f"{'preset':<8}{'ms/slice':>10}{'x faster than paper':>22}{'params (M)':>12}{'peak RSS (MiB)':>16}"
          f"{'RSS increase':>14}")
    for r in results:
        r["speedup_vs_paper"] = paper["ms_per_slice"] / r["ms_per_slice"]
        print(f"{r['preset']:<8}{r['ms_per_slice']:>10.1f}{r['speedup_vs_paper']:>22.1f}{r['parameters_m']:>12.2f}"
              f"{r['peak_rss_mib']:>16.0f}{r['scoring_rss_increase_mib']:>14.0f}")
    return paper


def print_stages(stages: dict) -> dict:
    count, loop = stages["slices"], stages["loop_s"]
    print(f"\nstages of `score` on {count} slices of 512x512 ({stages['device']}, batch {stages['batch_size']}; "
          f"regions {stages['regions']}, adequacy {stages['adequacy']})")
    print(f"{'stage':<16}{'ms/slice':>10}{'share of scoring loop':>23}")
    for name, seconds in stages["stages_s"].items():
        share = f"{100.0 * seconds / loop:>22.1f}%" if name in IN_LOOP else f"{'(outside)':>23}"
        print(f"{name:<16}{1000.0 * seconds / count:>10.2f}{share}")
    inside = sum(seconds for name, seconds in stages["stages_s"].items() if name in IN_LOOP)
    print(f"{'other (loop)':<16}{1000.0 * (loop - inside) / count:>10.2f}{100.0 * (loop - inside) / loop:>22.1f}%")
    print(f"{'scoring loop':<16}{1000.0 * loop / count:>10.2f}{100.0:>22.1f}%")
    print(f"{'plot (--plot)':<16}{1000.0 * stages['plot_s'] / count:>10.2f}{'(outside)':>23}")
    physics = stages["stages_s"]["regions"] + stages["stages_s"]["noise index"]
    share = physics / loop
    print(f"regions + noise index: {100.0 * share:.1f}% of the scoring loop (target under 20%)")
    outside = sum(seconds for name, seconds in stages["stages_s"].items() if name not in IN_LOOP)
    path_ms = 1000.0 * (loop + outside) / count
    network_ms = 1000.0 * stages["stages_s"]["network"] / count
    print(f"the whole path in this one process (reading, scoring loop, scanner dose, outputs): {path_ms:.1f} ms per "
          f"slice, {path_ms / network_ms:.2f}x its own network time ({network_ms:.1f} ms)")
    return {"regions_and_noise_share": share, "path_ms_per_slice": path_ms, "path_vs_network": path_ms / network_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, help="slices per forward pass of the network timing (default: what "
                        "`score` uses on the device, 2 on the CPU, 32 on a GPU)")
    parser.add_argument("--seconds", type=float, default=4.0, help="least seconds each network is timed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="paper,fast,tiny,shipped",
                        help="presets to time; 'shipped' is the shipped weights file with its own input channels")
    parser.add_argument("--slices", type=int, default=100, help="slices of the series scored end to end")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds, each timing the shipped network, then `score` on both series; the best of each "
                        "is kept, so a busy spell of the machine touches them alike")
    parser.add_argument("--networks-only", action="store_true", help="time the networks only (step 1)")
    parser.add_argument("--against", metavar="CHECKOUT", type=Path,
                        help="also time `score` end to end with another checkout's code (a git worktree of an "
                        "earlier commit), alternating with this one's in each round: before and after in one run")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--stages", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size is None:  # the networks are timed at the batch size `score` runs them at
        sys.path.insert(0, str(ROOT))
        from DistilIQALib.quality.scoring import CPU_BATCH_SIZE, DEFAULT_BATCH_SIZE

        args.batch_size = CPU_BATCH_SIZE if args.device == "cpu" else DEFAULT_BATCH_SIZE
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.seconds, args.device)))
        return 0
    if args.stages:
        print(json.dumps(measure_stages(args.stages, args.device)))
        return 0
    presets = args.presets.split(",")
    if not args.networks_only:
        presets += [name for name in ("paper", "shipped") if name not in presets]
    results = [child(args, "--child", preset) for preset in presets]
    paper = print_networks(results, args.batch_size)
    report = {"networks": results}
    if not args.networks_only:
        network = next(r for r in results if r["preset"] == "shipped")
        with tempfile.TemporaryDirectory() as folder:
            large = write_series(Path(folder) / "large", args.slices)
            small = write_series(Path(folder) / "small", SMALL_SLICES)
            stages = child(args, "--stages", str(large))
            report["stages"] = stages
            report.update(print_stages(stages))
            large_s = small_s = float("inf")
            for round_ in range(args.repeats):
                if round_:  # the first round's network time is step 1's
                    again = child(args, "--child", "shipped")
                    if again["ms_per_slice"] < network["ms_per_slice"]:
                        network = again
                large_s = min(large_s, time_score_command(large, args.device))
                small_s = min(small_s, time_score_command(small, args.device))
            if args.against:
                report["against"] = compare_checkouts(args.against.resolve(), large, small, args.slices,
                                                      args.device, args.repeats)
        per_slice_ms = 1000.0 * (large_s - small_s) / (args.slices - SMALL_SLICES)
        report["end_to_end"] = {"large_s": large_s, "small_s": small_s, "ms_per_slice": per_slice_ms,
                                "network_ms_per_slice": network["ms_per_slice"],
                                "vs_network": per_slice_ms / network["ms_per_slice"],
                                "speedup_vs_paper": paper["ms_per_slice"] / per_slice_ms}
        print(f"\nend to end (`score SERIES --device {args.device} --out CSV --json JSON`, "
              f"best of {args.repeats} rounds): "
              f"{args.slices} slices {large_s:.2f} s, {SMALL_SLICES} slices {small_s:.2f} s: "
              f"{per_slice_ms:.1f} ms per slice")
        print(f"  {report['end_to_end']['vs_network']:.2f}x the shipped network's own {network['ms_per_slice']:.1f} "
              f"ms (target at most 1.3x); {report['end_to_end']['speedup_vs_paper']:.1f}x faster than `paper` "
              f"({paper['ms_per_slice']:.1f} ms; target at least 20x)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
