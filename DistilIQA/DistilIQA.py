"""DistilIQA Slicer module: no-reference quality of every CT slice.

This file holds only the Slicer classes (module, widget, logic, test). The work is done by the
``DistilIQALib`` engine that ships beside it; everything that touches MRML is in
``DistilIQALib.mrml``.
"""
import os
import sys
import threading

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer releases before translation support
    def _(text):
        return text

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # pragma: no cover - Slicer < 5.2 is not supported
    parameterNodeWrapper = None

# Installed, DistilIQALib sits beside this file; in the source tree it is one folder up.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "DistilIQALib")):
        if _folder not in sys.path:
            sys.path.insert(0, _folder)
        break

#: Packages the engine needs besides what Slicer bundles (PyTorch comes through the PyTorch extension).
REQUIRED_PACKAGES = {"einops": "einops>=0.7", "safetensors": "safetensors>=0.4"}


class DistilIQA(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DistilIQA")
        self.parent.categories = [_("Quality Control")]
        self.parent.dependencies = []
        self.parent.contributors = ["DistilIQA developers"]
        self.parent.helpText = _(
            "Scores the perceptual quality of every axial slice of a CT without a reference image "
            "(DistilIQA: a distilled vision transformer), beside a physics noise index in HU, with a quality "
            "map on the slice views, a per-slice plot and a dose-adequacy chart. "
            "For research and quality assurance, not for diagnosis.")
        self.parent.acknowledgementText = _(
            "Method: Baldeon-Calisto et al., DistilIQA, Computers in Biology and Medicine, 2024.")


if parameterNodeWrapper is not None:
    @parameterNodeWrapper
    class DistilIQAParameterNode:
        inputVolume: slicer.vtkMRMLScalarVolumeNode
        weightsPath: str = ""
        device: str = "auto"
        batchSize: int = 0  # 0: automatic (32 on a GPU, 2 on the CPU)
        showOverlay: bool = True
        overlayOpacity: float = 0.35
        datasetPath: str = ""
        datasetType: str = "tcia"
        trainingOutputPath: str = ""
        teacherPreset: str = "paper"
        studentPreset: str = "fast"
        folds: int = 5
        epochs: int = 500
        trainingBatchSize: int = 10
        learningRate: float = 0.001
        distillationWeight: float = 0.75
        trainingDevice: str = "auto"


class DistilIQAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._scoring = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DistilIQA.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DistilIQALogic()
        self.ui.worstSlicesTable.setHorizontalHeaderLabels([_("slice"), _("z (mm)"), _("score")])
        self.ui.batchTable.setHorizontalHeaderLabels([_("patient"), _("date"), _("series"), _("slices"),
                                                      _("mean"), _("min"), _("% inadequate")])
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showOverlayCheckBox.connect("toggled(bool)", self.onOverlayChanged)
        self.ui.overlayOpacitySpinBox.connect("valueChanged(double)", self.onOverlayChanged)
        self.ui.worstSlicesTable.connect("cellClicked(int,int)", self.onWorstSliceClicked)
        self.ui.batchButton.connect("clicked(bool)", self.onBatchButton)
        self.ui.exportBatchButton.connect("clicked(bool)", self.onExportBatch)
        self.ui.batchTable.connect("cellDoubleClicked(int,int)", self.onBatchRowDoubleClicked)
        for name, task in (("preprocessButton", "preprocess"), ("trainTeachersButton", "train-teacher"),
                           ("trainStudentButton", "train-student"), ("evaluateButton", "evaluate")):
            getattr(self.ui, name).connect("clicked(bool)", lambda checked, task=task: self.onTrainingTask(task))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        self.cancelEverything()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.cancelEverything()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # --- Assess Quality -------------------------------------------------------------------------

    def onApplyButton(self):
        if self._scoring is not None:
            self._scoring.progress.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            parameters = self._parameterNode
            if not parameters.inputVolume:
                raise ValueError(_("Select a CT volume first."))
            self._scoring = self.logic.startScoring(parameters.inputVolume, parameters.weightsPath or None,
                                                    parameters.device, parameters.batchSize)
            self.ui.deviceInUseLabel.text = self._scoring.deviceName
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.value = 0
            self._timer.start()

    def onTimer(self):
        if self._scoring is not None:
            self._pollScoring()
        if self._job is not None:
            self._pollJob()
        if self._scoring is None and self._job is None:
            self._timer.stop()

    def _pollScoring(self):
        run = self._scoring
        self.ui.progressBar.maximum = max(1, run.total)
        self.ui.progressBar.value = run.done
        left = run.progress.seconds_left(run.done, run.total)
        self.ui.statusLabel.text = _("Scored {done} of {total} slices").format(done=run.done, total=run.total) + (
            _(", about {seconds:.0f} s left").format(seconds=left) if left is not None else "")
        if run.thread.is_alive():
            return
        self._scoring = None
        self.ui.applyButton.text = _("Assess Quality")
        if run.error is not None:
            self.ui.statusLabel.text = str(run.error)
            if "cancelled" not in str(run.error):
                slicer.util.errorDisplay(_("DistilIQA failed: {error}").format(error=run.error),
                                         detailedText=run.details)
            return
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not show the results."), waitCursor=True):
            nodes = self.logic.showResults(run, self._parameterNode.showOverlay, self._parameterNode.overlayOpacity)
            self._resultsShown(run.scores, nodes)

    def _resultsShown(self, scores, nodes):
        self._showSummary(scores)
        self._lastResults = nodes
        self._observeSliceViews()
        self._observePlotClicks()

    def _showSummary(self, scores):
        summary = scores.summary()
        text = _("Mean score {mean:.3f}; worst slice {index} (score {worst:.3f}).").format(
            mean=summary["mean_score"], index=summary["worst_slices"][0]["slice_index"],
            worst=summary["worst_slices"][0]["score"])
        if summary["fraction_inadequate"] is not None:
            text += " " + _("{percent:.0f}% of slices below the adequacy threshold.").format(
                percent=100 * summary["fraction_inadequate"])
        for warning in summary["warnings"]:
            text += "\n" + warning
        self.ui.summaryLabel.text = text
        table = self.ui.worstSlicesTable
        table.setRowCount(len(summary["worst_slices"]))
        for row, worst in enumerate(summary["worst_slices"]):
            for column, value in enumerate((worst["slice_index"], f"{worst['z_mm']:.1f}", f"{worst['score']:.4f}")):
                table.setItem(row, column, qt.QTableWidgetItem(str(value)))

    def _observeSliceViews(self):
        """Show the current slice's score in each slice view's corner as the user scrolls."""
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            sliceNode = layoutManager.sliceWidget(name).mrmlSliceNode()
            if not self.hasObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceMoved):
                self.addObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceMoved)
        self.onSliceMoved()

    def onSliceMoved(self, caller=None, event=None):
        from DistilIQALib.mrml import score_text_at

        results = getattr(self, "_lastResults", None)
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            sliceNode = widget.mrmlSliceNode()
            text = ""
            if results is not None and sliceNode.GetOrientation() == "Axial":
                text = score_text_at(results.table, sliceNode.GetSliceOffset())
            view = widget.sliceView()
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperRight, text)
            view.forceRender()

    def _observePlotClicks(self):
        """Clicking a point of a DistilIQA chart moves the slice views to that slice."""
        layoutManager = slicer.app.layoutManager()
        for index in range(layoutManager.plotViewCount):
            view = layoutManager.plotWidget(index).plotView()
            if not view.property("DistilIQAConnected"):
                view.connect("dataSelected(vtkStringArray*, vtkCollection*)", self.onPlotDataSelected)
                view.setProperty("DistilIQAConnected", True)

    def onPlotDataSelected(self, seriesIds, selections):
        results = getattr(self, "_lastResults", None)
        if results is None:
            return
        table = results.table.GetTable()
        for n in range(selections.GetNumberOfItems()):
            points = selections.GetItemAsObject(n)
            if points is not None and points.GetNumberOfTuples():
                self.logic.jumpToZ(table.GetValue(int(points.GetValue(0)), 1).ToDouble())
                return

    def onWorstSliceClicked(self, row, column):
        item = self.ui.worstSlicesTable.item(row, 1)
        if item is not None:
            self.logic.jumpToZ(float(item.text()))

    def onOverlayChanged(self, *unused):
        if getattr(self, "_lastResults", None) is not None and self._parameterNode.inputVolume:
            self.logic.showOverlay(self._parameterNode.inputVolume, self._lastResults.quality_map,
                                   self._parameterNode.showOverlay, self._parameterNode.overlayOpacity)

    # --- background jobs: DICOM database batch and training -----------------------------------------

    def _startJob(self, arguments, button, progressBar, logWidget=None):
        if self._job is not None:
            self._job.cancel()
            return
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not start the job."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self._job = self.logic.startJob(arguments)
            self._jobWidgets = (button, button.text, progressBar, logWidget)
            button.text = _("Cancel")
            progressBar.value = 0
            self._timer.start()

    def _pollJob(self):
        button, label, progressBar, logWidget = self._jobWidgets
        lines, records, code = self._job.poll()
        for line in lines:
            if logWidget is not None:
                logWidget.appendPlainText(line)
        for record in records:
            if "epochs" in record:
                progressBar.maximum = record["epochs"]
                progressBar.value = record["epoch"]
        if code is None:
            return
        self._job = None
        button.text = label
        if code != 0:
            slicer.util.errorDisplay(_("The job ended with an error; see the log for details."),
                                     detailedText="\n".join(lines[-20:]))
        elif self._jobWidgets[0] is self.ui.batchButton:
            self._fillBatchTable()
        elif self._jobWidgets[0] is self.ui.trainStudentButton:
            self._offerStudent()

    def onBatchButton(self):
        self._startJob(self.logic.batchArguments(self._parameterNode.weightsPath or None), self.ui.batchButton,
                       self.ui.batchProgressBar)

    def _fillBatchTable(self):
        rows = self.logic.batchRows()
        table = self.ui.batchTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (row["patient_id"], row["study_date"], row["description"], row["num_slices"],
                      row["mean_score"], row["min_score"], row["fraction_inadequate"])
            for c, value in enumerate(values):
                text = "" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, row["series_uid"])
                table.setItem(r, c, item)

    def onExportBatch(self):
        path = qt.QFileDialog.getSaveFileName(None, _("Export batch results"), "distiliqa_batch.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
                self.logic.exportBatch(path)

    def onBatchRowDoubleClicked(self, row, column):
        item = self.ui.batchTable.item(row, 0)
        if item is not None:
            parameters = self._parameterNode
            with slicer.util.tryWithErrorDisplay(_("Could not load the series."), waitCursor=True):
                loaded = self.logic.loadSeriesWithScores(item.data(qt.Qt.UserRole), parameters.weightsPath or None,
                                                         parameters.showOverlay, parameters.overlayOpacity)
                if loaded is not None:
                    volume, scores, nodes = loaded
                    parameters.inputVolume = volume
                    self._resultsShown(scores, nodes)

    def onTrainingTask(self, task):
        buttons = {"preprocess": self.ui.preprocessButton, "train-teacher": self.ui.trainTeachersButton,
                   "train-student": self.ui.trainStudentButton, "evaluate": self.ui.evaluateButton}
        with slicer.util.tryWithErrorDisplay(_("Check the training settings."), waitCursor=False):
            arguments = self.logic.trainingArguments(task, self._parameterNode)
            self.ui.trainingLog.appendPlainText("$ distiliqa " + " ".join(arguments))
            self._startJob(arguments, buttons[task], self.ui.trainingProgressBar, self.ui.trainingLog)

    def _offerStudent(self):
        student = os.path.join(self._parameterNode.trainingOutputPath, "student.safetensors")
        if os.path.isfile(student) and slicer.util.confirmYesNoDisplay(
                _("A new student model is ready. Use it for Assess Quality?")):
            self._parameterNode.weightsPath = student

    def cancelEverything(self):
        if self._scoring is not None:
            self._scoring.progress.cancel()
        if self._job is not None:
            self._job.cancel()
            self._job = None


class _ScoringRun:
    """A scoring run in a worker thread; the widget polls ``done``/``total`` and reads the result."""

    def __init__(self, scorer, volume, ctNode):
        from DistilIQALib import Progress

        self.scorer, self.volume, self.ctNode = scorer, volume, ctNode
        self.deviceName = scorer.device_name
        self.done, self.total = 0, volume.num_slices
        self.scores = self.error = None
        self.details = ""
        self.progress = Progress(self._onProgress)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _onProgress(self, done, total, stage):
        self.done, self.total = done, total

    def _run(self):
        import traceback

        try:
            self.scores = self.scorer.score_volume(self.volume, self.progress)
        except Exception as error:  # shown by the widget on the main thread
            self.error = error
            self.details = traceback.format_exc()


class DistilIQALogic(ScriptedLoadableModuleLogic):
    """Script-friendly entry points; the engine does the work."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DistilIQAParameterNode(super().getParameterNode())

    def ensureDependencies(self, askConfirmation=True):
        """PyTorch through the PyTorch extension, the rest with pip, each only after the user agrees."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("DistilIQA needs the PyTorch extension: install 'PyTorch' from the "
                                     "Extensions Manager and restart Slicer.")) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation) is None:
                return False
        import importlib.util

        missing = [spec for name, spec in REQUIRED_PACKAGES.items() if importlib.util.find_spec(name) is None]
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("DistilIQA will install these Python packages: {packages}").format(packages=", ".join(missing))):
                return False
            try:
                slicer.util.pip_install(missing)
            except Exception as error:
                raise RuntimeError(_("Installing {packages} failed ({error}). Check the network connection and "
                                     "try again.").format(packages=", ".join(missing), error=error)) from None
        return True

    def startScoring(self, ctNode, weightsPath=None, device="auto", batchSize=None):
        from DistilIQALib import Scorer
        from DistilIQALib.mrml import volume_from_node

        scorer = Scorer(weightsPath, device=device, batch_size=batchSize or None)
        return _ScoringRun(scorer, volume_from_node(ctNode), ctNode)

    def process(self, ctNode, weightsPath=None, device="auto", batchSize=None, showOverlay=True):
        """Score ``ctNode`` and create its result nodes, synchronously (for scripts and tests)."""
        run = self.startScoring(ctNode, weightsPath, device, batchSize)
        run.thread.join()
        if run.error is not None:
            raise run.error
        return self.showResults(run, showOverlay)

    def showResults(self, run, showOverlay=True, opacity=0.35):
        from DistilIQALib import mrml

        return self._present(run.ctNode, mrml.show_results(run.ctNode, run.scores, run.volume), showOverlay, opacity)

    def _present(self, ctNode, nodes, showOverlay, opacity):
        self.showOverlay(ctNode, nodes.quality_map, showOverlay, opacity)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
            slicer.modules.plots.logic().ShowChartInLayout(nodes.adequacy_chart)
        return nodes

    def showOverlay(self, ctNode, qualityMap, show=True, opacity=0.35):
        from DistilIQALib import mrml

        mrml.show_in_slice_views(slicer.mrmlScene, ctNode, qualityMap if show else None, opacity)

    def jumpToZ(self, zMm):
        for name in ("Red",):
            sliceNode = slicer.app.layoutManager().sliceWidget(name).mrmlSliceNode()
            sliceNode.SetSliceOffset(zMm)

    def batchStore(self):
        return os.path.join(slicer.dicomDatabase.databaseDirectory, "DistilIQA_results.sqlite")

    def batchArguments(self, weightsPath=None):
        if not slicer.dicomDatabase or not slicer.dicomDatabase.isOpen:
            raise RuntimeError(_("Slicer's DICOM database is not open."))
        arguments = ["batch", slicer.dicomDatabase.databaseDirectory, "--db", self.batchStore()]
        return arguments + (["--weights", weightsPath] if weightsPath else [])

    def batchRows(self):
        from DistilIQALib.store import ResultStore

        with ResultStore(self.batchStore()) as store:
            return [row for row in store.series_rows() if row["status"] == "scored"]

    def exportBatch(self, path):
        from DistilIQALib.batch import write_summary_csv

        write_summary_csv(self.batchStore(), path)

    def loadSeriesWithScores(self, seriesUid, weightsPath=None, showOverlay=True, opacity=0.35):
        """Load a series from the DICOM database and show the scores the batch run stored for it (no
        rescoring); returns ``(volume node, scores, result nodes)`` or None when nothing loaded."""
        from DICOMLib import DICOMUtils

        from DistilIQALib.batch import stored_scores
        from DistilIQALib.mrml import show_stored_results

        loaded = DICOMUtils.loadSeriesByUID([seriesUid])
        node = slicer.mrmlScene.GetNodeByID(loaded[0]) if loaded else None
        if node is None:
            return None
        scores = stored_scores(self.batchStore(), seriesUid, weightsPath)
        return node, scores, self._present(node, show_stored_results(node, scores), showOverlay, opacity)

    def trainingArguments(self, task, parameters):
        if not parameters.datasetPath:
            raise ValueError(_("Choose the dataset folder."))
        if task == "preprocess":
            return ["preprocess", parameters.datasetPath, "--type", parameters.datasetType]
        if not parameters.trainingOutputPath:
            raise ValueError(_("Choose the output folder."))
        common = ["--output", parameters.trainingOutputPath, "--device", parameters.trainingDevice]
        if task == "evaluate":
            student = os.path.join(parameters.trainingOutputPath, "student.safetensors")
            return ["evaluate", parameters.datasetPath, "--weights", student, "--output",
                    os.path.join(parameters.trainingOutputPath, "evaluation"), "--device", parameters.trainingDevice]
        preset = parameters.teacherPreset if task == "train-teacher" else parameters.studentPreset
        arguments = [task, parameters.datasetPath, *common, "--preset", preset, "--folds", str(parameters.folds),
                     "--epochs", str(parameters.epochs), "--batch-size", str(parameters.trainingBatchSize),
                     "--lr", str(parameters.learningRate)]
        if task == "train-student":
            arguments += ["--distillation-weight", str(parameters.distillationWeight)]
        return arguments

    def startJob(self, arguments):
        from DistilIQALib.background import BackgroundProcess, engine_command

        python = getattr(slicer.app, "slicerHome", None) and self._pythonSlicer()
        root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["DistilIQALib"].__file__)))
        return BackgroundProcess(engine_command(arguments, python), env={"PYTHONPATH": root})

    def _pythonSlicer(self):
        import shutil

        return shutil.which("PythonSlicer") or sys.executable


class DistilIQATest(ScriptedLoadableModuleTest):
    """Runs the whole flow inside Slicer on a generated CT volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AssessQuality()

    def test_AssessQuality(self):
        import numpy as np

        from DistilIQALib.phantoms import phantom_volume
        from DistilIQALib.simulation import textured_noise
        from DistilIQALib.weights import default_weights_path

        logic = DistilIQALogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        hu = phantom_volume(24, size=512, pixel_mm=0.7, noise_sd_hu=0, seed=3)
        noise_sd = np.full(24, 10.0, dtype=np.float32)
        noise_sd[10:14] = 40.0  # a low-dose slab (about 6% of the dose of the rest)
        hu += textured_noise(hu.shape, 1.0, np.random.default_rng(0)) * noise_sd[:, None, None]
        ct = slicer.util.addVolumeFromArray(np.rint(hu).astype(np.int16), name="DistilIQA test CT")
        matrix = vtk.vtkMatrix4x4()
        for axis, spacing in enumerate((-0.7, -0.7, 2.5)):
            matrix.SetElement(axis, axis, spacing)
        ct.SetIJKToRASMatrix(matrix)
        weights = default_weights_path()
        shipped = weights.is_file()
        if not shipped:
            self.delayDisplay("No trained model is installed; training a small one for the test")
            weights = self._trainTinyModel()
        nodes = logic.process(ct, str(weights), device="auto")
        table = nodes.table.GetTable()
        self.assertEqual(table.GetNumberOfRows(), 24)
        self.assertEqual(slicer.util.arrayFromVolume(nodes.quality_map).shape[0], 24)
        if shipped:
            scores = np.array([table.GetValue(row, 2).ToDouble() for row in range(24)])
            self.assertLess(scores[10:14].max(), np.delete(scores, range(10, 14)).min())
        again = logic.process(ct, str(weights), device="auto")
        self.assertEqual(again.table.GetID(), nodes.table.GetID())
        self.delayDisplay("DistilIQA self-test passed")

    def _trainTinyModel(self):
        import tempfile

        from DistilIQALib.background import engine_command
        from DistilIQALib.sample import write_tcia_like

        folder = tempfile.mkdtemp()
        data = write_tcia_like(os.path.join(folder, "tcia"), cases=("C001", "C002", "C003"), slices=2, i0=2e4)
        import subprocess

        for arguments in (["preprocess", str(data), "--type", "tcia", "--train-cases", "C001", "C002",
                           "--test-cases", "C003"],
                          ["train-teacher", str(data), "--output", folder, "--preset", "tiny", "--input-size", "256",
                           "--epochs", "2", "--folds", "2", "--batch-size", "4", "--purpose", "test"],
                          ["train-student", str(data), "--output", folder, "--preset", "tiny", "--input-size", "256",
                           "--epochs", "2", "--folds", "2", "--batch-size", "4", "--purpose", "test"]):
            subprocess.run(engine_command(arguments, DistilIQALogic()._pythonSlicer()), check=True)
        return os.path.join(folder, "student.safetensors")
