"""Results of a learned model (outputs: log effective noise, HU) made by hand, with the dose equivalents and the
driver of every slice worked out in the comments, for the tests of what is written, stored and shown."""
import math

import numpy as np

from DistilIQALib.quality.interpretation import dose_equivalent_adequacy, region_bands
from DistilIQALib.quality.regions import given_regions
from DistilIQALib.quality.scoring import EFFECTIVE_NOISE, SliceScores
from DistilIQALib.quality.weights import ModelInfo, ScoreDefinition

#: One routine level, for the abdomen only: 1000 HU^2 mm at any size, so at 5 mm a slice's dose equivalent is
#: 200 / noise^2 (10 HU -> 2.0, 18 HU -> 0.62, 40 HU -> 0.125); good from 0.5, inadequate below 0.2. The network's
#: effective noise counts divided by 1.15 (the default artefact margin): 46 HU -> 40 HU.
REFERENCE = {"regions": {"abdomen": {"intercept": math.log(1000.0), "per_cm": 0.0, "bands": region_bands(0.5, 0.2),
                                     "above_routine_from": 2.5, "basis": "fitted", "patients": 12}}}
THICKNESS_MM = 5.0
NOISE_HU = [10.0, 10.0, 18.0, 18.0, float("nan"), 10.0]
EFFECTIVE_HU = [10.5, 46.0, 18.0, 12.0, 30.0, float("nan")]
#: slice 1: the noise says 2.0 (good), the network 0.125 (inadequate): artefacts set the verdict. Slice 4 has no
#: noise figure: no verdict, no score. Elsewhere the network sees no worse band than the noise gives.
DRIVERS = ["noise", "artefacts", "noise", "noise", "", "noise"]
ADEQUACY = ["good", "inadequate", "good", "good", "unknown", "good"]
ARTEFACT_SLICE, NO_VERDICT_SLICE = 1, 4


def learned_info() -> ModelInfo:
    return ModelInfo(preset="tiny", architecture=None,
                     score=ScoreDefinition(name=EFFECTIVE_NOISE, description="learned dose equivalent",
                                           minimum=0.05, maximum=4.0),
                     adequacy=dose_equivalent_adequacy(0.5, 0.2), noise_reference=REFERENCE, weights_id="learned")


def learned_scores(z_mm=None, info=None, effective=EFFECTIVE_HU, region="abdomen") -> SliceScores:
    """The six slices above, every one in ``region``; the score is the learned dose equivalent, as the scorer
    makes it (NaN where a slice has no verdict). ``effective=None``: an older model's results (no effective
    noise; the score is then a placeholder of zeros)."""
    count = len(NOISE_HU)
    z = np.arange(count) * THICKNESS_MM if z_mm is None else np.asarray(z_mm, dtype=np.float64)
    scores = SliceScores(slice_index=np.arange(count), z_mm=z, score=np.zeros(count, np.float32),
                         outputs=np.log(np.asarray(EFFECTIVE_HU if effective is None else effective,
                                                   np.float32))[:, None],
                         noise_hu=np.asarray(NOISE_HU, np.float32), info=info or learned_info(), source="learned",
                         device="cpu", diameter_cm=np.full(count, 25.0, np.float32), thickness_mm=THICKNESS_MM,
                         regions=given_regions(region, count),
                         effective_noise_hu=None if effective is None else np.asarray(effective, np.float64))
    if effective is not None:
        scores.score = scores.verdicts.learned_dose_equivalent
    return scores
