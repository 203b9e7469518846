"""The documentation's pictures (``docs/images``, shown on docs/slicer.md, docs/command-line.md and the README):
what the Slicer module shows for the sample CT, composed headless by Slicer's own slice logic (``slicer-core``),
and the per-slice plot, all from the shipped model.

    .venv/bin/python docs/make_pictures.py [--out docs/images] [--real corpus/files/lungdx_A0002]
                                           [--real-head corpus/files/head_invesalius_0051]

Needs the test extras (``pip install -e ".[test]"``: slicer-core, matplotlib). ``--real`` also renders a real
chest CT of the corpus (TCIA Lung-PET-CT-Dx, patient A0002, CC BY 4.0) with eight slices lowered to 10% of
their dose relative to their own noise (``real_*.png``); ``--real-head`` the same for a real routine head CT
(InVesalius' 0051, GPL-2; ``real_head_*.png``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--real", type=Path, help="a real CT series folder to render as well")
    parser.add_argument("--real-head", type=Path, help="a real head CT series folder to render as well")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import slicer
    from matplotlib import pyplot as plt

    from DistilIQALib.io.outputs import write_plot
    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.quality.scoring import Scorer
    from DistilIQALib.slicer_bridge import mrml
    from DistilIQALib.training.sample import make_sample_ct

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        volume = read_volume(make_sample_ct(Path(folder) / "sample_ct"))
    scores = Scorer(device="cpu").score_volume(volume)
    scene = slicer.vtkMRMLScene()
    ct = mrml.node_from_volume(scene, volume, "sample CT")
    nodes = mrml.show_results(ct, scores, volume)
    renderer = mrml.SliceRenderer(scene, size=360)
    z = volume.z_mm()
    worst = int(np.nanargmin(scores.score))
    best = int(np.nanargmax(scores.score))
    anterior = -float(volume.slice_centres_mm()[0, 1])  # RAS A of the volume's centre
    renderer.render(ct, nodes.quality_map, "Axial", float(z[worst]), args.out / "axial_low_dose.png", 0.35)
    renderer.render(ct, nodes.quality_map, "Axial", float(z[best]), args.out / "axial_full_dose.png", 0.35)
    coronal = renderer.render(ct, nodes.quality_map, "Coronal", anterior, None, 0.35)
    rows = np.flatnonzero((coronal[..., :3] != coronal[0, 0, :3]).any(axis=(1, 2)))  # crop the empty view
    plt.imsave(args.out / "coronal_quality_map.png", coronal[rows.min():rows.max() + 1, :, :3])
    write_plot(scores, args.out / "sample_scores.png", title="DistilIQA per-slice quality: sample CT with a dose dip")
    compose_screenshot(args.out)
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} to {args.out}")
    print(f"worst slice {worst} (score {scores.score[worst]:.3f}), best slice {best} "
          f"(score {scores.score[best]:.3f})")
    if args.real:
        real_pictures(args.real, args.out)
    if args.real_head:
        real_pictures(args.real_head, args.out, range(50, 58), prefix="real_head", label="real head CT",
                      origin="InVesalius 0051, Siemens, 2 mm")
    return 0


def real_pictures(folder: Path, out: Path, low_slices=range(12, 20), dose: float = 0.1, prefix: str = "real",
                  label: str = "real chest CT", origin: str = "TCIA Lung-PET-CT-Dx A0002") -> None:
    """A real CT with ``low_slices`` lowered to ``dose`` (relative to each slice's own noise), scored and shown."""
    import numpy as np
    import slicer

    from DistilIQALib.io.outputs import write_plot
    from DistilIQALib.io.reading import read_volume
    from DistilIQALib.quality.noise import slice_noise_index
    from DistilIQALib.quality.scoring import Scorer
    from DistilIQALib.slicer_bridge import mrml
    from DistilIQALib.training.simulation import DoseSimulator, matched_kernel_sharpness
    from DistilIQALib.volume import CTVolume

    volume = read_volume(folder)
    hu = np.asarray(volume.hu, dtype=np.float32).copy()
    pixel_mm = float(volume.spacing_mm[0])
    for k in low_slices:
        simulator = DoseSimulator(hu[k], pixel_mm, seed=k, reference_noise_hu=slice_noise_index(hu[k], pixel_mm),
                                  kernel=matched_kernel_sharpness(hu[k], pixel_mm))
        hu[k] = simulator.at_dose(dose)
    lowered = CTVolume(np.round(hu).astype(np.int16), volume.spacing_mm, volume.origin_mm, volume.direction,
                       source=label, metadata=volume.metadata)
    scores = Scorer(device="cpu").score_volume(lowered)
    scene = slicer.vtkMRMLScene()
    ct = mrml.node_from_volume(scene, lowered, label)
    nodes = mrml.show_results(ct, scores, lowered)
    renderer = mrml.SliceRenderer(scene, size=360)
    z = lowered.z_mm()
    normal = [k for k in range(lowered.num_slices) if k not in set(low_slices)]
    middle_low = list(low_slices)[len(low_slices) // 2]
    nearest_normal = min(normal, key=lambda k: abs(k - middle_low))
    renderer.render(ct, nodes.quality_map, "Axial", float(z[nearest_normal]), out / f"{prefix}_axial_full_dose.png",
                    0.35)
    renderer.render(ct, nodes.quality_map, "Axial", float(z[middle_low]), out / f"{prefix}_axial_10pct_dose.png", 0.35)
    write_plot(scores, out / f"{prefix}_scores.png",
               title=f"{label[0].upper()}{label[1:]} ({origin}), slices {low_slices.start}-{low_slices.stop - 1} "
                     f"at {dose:.0%} dose")
    bands = scores.adequacy or []
    print(f"{label}: regions {sorted(set(scores.region))}; full-dose slices "
          f"{np.round(np.nanpercentile(scores.score[normal], [0, 50, 100]), 3)} "
          f"({sum(bands[k] == 'good' for k in normal)}/{len(normal)} good), {dose:.0%}-dose slices "
          f"{np.round(np.nanpercentile(scores.score[list(low_slices)], [0, 50, 100]), 3)} "
          f"({sum(bands[k] == 'inadequate' for k in low_slices)}/{len(low_slices)} inadequate); verdicts set by "
          f"artefacts: {sum(d == 'artefacts' for d in (scores.driver or []))}")


def compose_screenshot(folder: Path) -> Path:
    """``screenshot.png`` for the Extensions Index: the three slice views (two axial, one coronal) with the
    quality map over them, above the per-slice score plot, laid out as Slicer's four-up view with a plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    views = [("axial_full_dose.png", "Red", "#f34a33", "axial, full dose"),
             ("axial_low_dose.png", "Yellow", "#edd54c", "axial, in the dose dip"),
             ("coronal_quality_map.png", "Green", "#6eb04b", "coronal: the dip is the orange band")]
    figure = plt.figure(figsize=(11, 8), dpi=100, facecolor="#2b2b2b")
    grid = figure.add_gridspec(2, 3, height_ratios=(1.0, 1.15), hspace=0.12, wspace=0.04, left=0.02, right=0.98,
                               top=0.9, bottom=0.01)
    for column, (name, view, colour, caption) in enumerate(views):
        axis = figure.add_subplot(grid[0, column], facecolor="black")
        axis.imshow(plt.imread(folder / name))
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(3)
        axis.set_title(f"{view}: {caption}", color="white", fontsize=10, loc="left")
    plot = figure.add_subplot(grid[1, :])
    plot.imshow(plt.imread(folder / "sample_scores.png"))
    plot.axis("off")
    figure.suptitle("DistilIQA in 3D Slicer: per-slice quality of a CT with a dose dip", color="white", fontsize=13,
                    y=0.975)
    path = folder / "screenshot.png"
    figure.savefig(path, facecolor=figure.get_facecolor())
    plt.close(figure)
    return path


if __name__ == "__main__":
    sys.exit(main())
