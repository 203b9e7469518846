"""DistilIQA Slicer module: no-reference quality of every CT slice.

This file holds only the Slicer classes; the work is done by the ``DistilIQALib``
engine that ships beside it.
"""
import os
import sys

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer releases before translation support
    def _(text):
        return text

# Installed, DistilIQALib sits beside this file; in the source tree it is one folder up.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "DistilIQALib")):
        if _folder not in sys.path:
            sys.path.insert(0, _folder)
        break


class DistilIQA(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DistilIQA")
        self.parent.categories = [_("Quality Control")]
        self.parent.dependencies = []
        self.parent.contributors = ["DistilIQA developers"]
        self.parent.helpText = _(
            "Scores the perceptual quality of every axial slice of a CT without a reference image "
            "(DistilIQA: a distilled vision transformer), beside a physics noise index in HU. "
            "For research and quality assurance, not for diagnosis.")
        self.parent.acknowledgementText = _(
            "Method: Baldeon-Calisto et al., DistilIQA, Computers in Biology and Medicine, 2024.")


class DistilIQAWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        label = qt.QLabel(_("The DistilIQA panel is not available in this version; use "
                            "'python -m DistilIQALib score' from Slicer's Python."))
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)


class DistilIQALogic(ScriptedLoadableModuleLogic):
    def scoreFile(self, path, weightsPath=None, device="auto"):
        """Score a CT file or DICOM folder; returns the engine's per-slice results."""
        from DistilIQALib import Scorer, read_volume

        return Scorer(weightsPath, device=device).score_volume(read_volume(path))


class DistilIQATest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_engineImports()

    def test_engineImports(self):
        import DistilIQALib

        self.assertTrue(hasattr(DistilIQALib, "Scorer"))
