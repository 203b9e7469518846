"""DistilIQA Slicer module: no-reference quality of every CT slice.

This file holds only the Slicer classes (module, widget, logic, test). The work is done by the
``DistilIQALib`` engine that ships beside it; everything that touches MRML is in
``DistilIQALib.slicer_bridge.mrml``. Every long job (Assess Quality, the DICOM database batch, training, site
adaptation) runs in a child process (``PythonSlicer -m DistilIQALib ...``), never in a thread of
Slicer's process: Slicer's Python keeps the interpreter lock while the Qt event loop idles, so a
worker thread would only run during the panel's timer ticks.
"""
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer releases before translation support
    def _(text):
        return text

    def translate(context, text):
        return text


def _extensionRoot():
    """The folder holding ``DistilIQALib`` and ``Resources``: this file's folder once installed
    (``qt-scripted-modules/``), its parent in the source tree (``DistilIQA/`` added to the module paths)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "DistilIQALib")) and os.path.isdir(os.path.join(folder, "Resources")):
            return folder
    return here


def _resourcePath(filename):
    """Slicer's ``resourcePath`` looks only beside the module file (ScriptedLoadableModule.py:53-56 and
    :112-115 in Slicer 5.8.1), which misses the source tree's top-level ``Resources``; this finds both."""
    return os.path.join(_extensionRoot(), "Resources", filename)


if _extensionRoot() not in sys.path:
    sys.path.insert(0, _extensionRoot())

class DistilIQA(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DistilIQA")
        # Categories are translated in the context of qSlicerAbstractCoreModule, as Slicer's template does
        # (Utilities/Templates/Modules/Scripted/TemplateKey.py:34, 5.8.1), so that they share Slicer's folders.
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["DistilIQA developers"]
        self.parent.helpText = _(
            "Scores the quality of every axial slice of a CT without a reference image, as a learned dose "
            "equivalent: the fraction of a routine dose for the slice's body region that it looks like, noise "
            "and artefacts alike (DistilIQA: a distilled vision transformer, beside a physics noise index in HU). "
            "Shows a quality map on the slice views, a per-slice plot and a dose-adequacy chart, and says whether "
            "noise or artefacts set each verdict. For research and quality assurance, not for diagnosis. "
            "Every section of this panel is described on "
            '<a href="https://github.com/DistilIQA/SlicerDistilIQA/blob/main/docs/slicer.md">the module\'s page</a>.')
        self.parent.acknowledgementText = _(
            "Method: Baldeon-Calisto et al., DistilIQA, Computers in Biology and Medicine, 2024.")
        # The base class takes the icon from Resources/ beside this file only (ScriptedLoadableModule.py:36-41,
        # Slicer 5.8.1); from the source tree it is one folder up.
        icon = _resourcePath("Icons/DistilIQA.png")
        if os.path.isfile(icon):
            self.parent.icon = qt.QIcon(icon)

    def resourcePath(self, filename):
        return _resourcePath(filename)


# Each field's annotation matches its widget in Resources/UI/DistilIQA.ui, as Slicer's GUI connectors require
# (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, Slicer 5.8.1): a QComboBox bound to a str needs
# Choice, whose items replace the combo box's (:357-378); a ctkPathLineEdit binds only to pathlib types
# (:607-611); a spin box without WithinRange gets -2**31..2**31-1 (:260-270) or -inf..inf (:325-336), so each
# carries the .ui's range. Testing/Python/test_ui.py checks every binding against the .ui.


@parameterNodeWrapper
class DistilIQAParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    weightsPath: pathlib.Path  # empty: the shipped model
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    region: Annotated[str, Choice(["auto", "head", "neck", "chest", "abdomen"])] = "auto"  # auto: read per slice
    batchSize: Annotated[int, WithinRange(0, 256)] = 0  # 0: automatic (32 on a GPU, 2 on the CPU)
    showOverlay: bool = True
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.35
    datasetPath: pathlib.Path
    datasetType: Annotated[str, Choice(["tcia", "ldctiqac", "list", "simulated"])] = "tcia"
    trainingOutputPath: pathlib.Path
    teacherPreset: Annotated[str, Choice(["paper", "fast", "tiny"])] = "paper"
    studentPreset: Annotated[str, Choice(["fast", "paper", "tiny"])] = "fast"
    folds: Annotated[int, WithinRange(2, 10)] = 5
    epochs: Annotated[int, WithinRange(1, 10000)] = 500
    trainingBatchSize: Annotated[int, WithinRange(1, 512)] = 10
    learningRate: Annotated[float, WithinRange(1e-06, 1.0)] = 0.001
    distillationWeight: Annotated[float, WithinRange(0.0, 10.0)] = 0.75
    trainingDevice: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    dicomwebUrl: str = ""  # empty: the batch scores Slicer's DICOM database


class DistilIQAWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._guiConnected = False
        self._scoring = None  # (ScoreJob, CT node) while Assess Quality runs
        self._jobs = None  # JobBoard: the batch and training jobs, one of each kind at a time
        self._plotViews = []  # plot views whose clicks this widget receives (disconnected in cleanup)
        self._lastResults = None
        self._appliedOverlay = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def resourcePath(self, filename):
        return _resourcePath(filename)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DistilIQA.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DistilIQALogic()
        self.ui.worstSlicesTable.setHorizontalHeaderLabels([_("slice"), _("z (mm)"), _("score")])
        self.ui.batchTable.setColumnCount(11)
        self.ui.batchTable.setHorizontalHeaderLabels([_("patient"), _("date"), _("series"), _("slices"),
                                                      _("mean"), _("min"), _("% inadequate"), _("region"),
                                                      _("dose equivalent"), _("% above routine"),
                                                      _("slices set by artefacts")])
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        # The overlay follows the parameter node (onParameterNodeModified), not the widgets' signals: those
        # can fire before the binding has written the new value into the node.
        self.ui.worstSlicesTable.connect("cellClicked(int,int)", self.onWorstSliceClicked)
        self.ui.batchButton.connect("clicked(bool)", self.onBatchButton)
        self.ui.exportBatchButton.connect("clicked(bool)", self.onExportBatch)
        self.ui.batchTable.connect("cellDoubleClicked(int,int)", self.onBatchRowDoubleClicked)
        for name, task in (("preprocessButton", "preprocess"), ("trainTeachersButton", "train-teacher"),
                           ("trainStudentButton", "train-student"), ("evaluateButton", "evaluate")):
            getattr(self.ui, name).connect("clicked(bool)", lambda checked, task=task: self.onTrainingTask(task))
        self.ui.adaptButton.connect("clicked(bool)", self.onAdaptButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self._timer.stop()
        self.removeObservers()
        self._disconnectPlotViews()
        self._disconnectGui()
        self.cancelEverything()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectGui()

    def onSceneStartClose(self, caller, event):
        # Only Assess Quality depends on the scene (its CT node); batch and training jobs go on.
        self._cancelScoring()
        self._lastResults = None
        self._appliedOverlay = None
        self.ui.summaryLabel.text = _("No results yet.")
        self.ui.worstSlicesTable.setRowCount(0)
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
        """Bind the GUI to ``parameterNode`` once, and undo the binding of the node it replaces. ``connectGui``
        returns nothing in Slicer 5.4-5.8 (wrapper.py:241-253 in 5.8.1, 233-245 in 5.4.0: the tag of
        ``_connectParametersToGui`` is dropped), so nothing could be unbound there and each scene close added a
        set of bindings; ``connectParametersToGui`` returns its tag on every release (wrapper.py:194-213 in
        5.8.1, :186-205 in 5.4.0, :195-215 on main), so the panel binds through it, with the widgets that
        ``connectGui`` would find (those with a ``SlicerParameterName`` property, wrapper.py:241-251). The tag
        starts at 0: it is tested with ``is not None``. The same node is never bound twice."""
        if (parameterNode is not None and self._parameterNode is not None and self._guiConnected
                and parameterNode.parameterNode is self._parameterNode.parameterNode):
            return
        self._disconnectGui()
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._parameterNodeGuiTag = parameterNode.connectParametersToGui(self._boundWidgets())
            self._guiConnected = True
            self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self.onParameterNodeModified)

    def _boundWidgets(self):
        from DistilIQALib.slicer_bridge.jobs import bound_widgets

        return bound_widgets(vars(self.ui).values(), "SlicerParameterName")

    def _disconnectGui(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self._guiConnected = False

    def onParameterNodeModified(self, caller=None, event=None):
        parameters = self._parameterNode
        if parameters is None or self._lastResults is None or not parameters.inputVolume:
            return
        overlay = (bool(parameters.showOverlay), float(parameters.overlayOpacity))
        if overlay != self._appliedOverlay:
            self._appliedOverlay = overlay
            self.logic.setOverlay(self._lastResults.quality_map, *overlay)

    # --- Assess Quality -------------------------------------------------------------------------

    def onApplyButton(self):
        if self._scoring is not None:
            self._scoring[0].cancel()
            self.ui.statusLabel.text = _("Cancelled.")
            return
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not start."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            parameters = self._parameterNode
            if not parameters.inputVolume:
                raise ValueError(_("Select a CT volume first."))
            job = self.logic.startScoring(parameters.inputVolume, parameters.weightsPath, parameters.device,
                                          parameters.batchSize, parameters.region)
            self._scoring = (job, parameters.inputVolume)
            self.ui.deviceInUseLabel.text = "-"
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.maximum = 0  # busy until the child reports the number of slices
            self.ui.statusLabel.text = _("Starting the scoring process...")
            self._timer.start()

    def onTimer(self):
        if self._scoring is not None:
            self._pollScoring()
        if self._jobs is not None:
            self._pollJobs()
        if self._scoring is None and not (self._jobs is not None and self._jobs.jobs()):
            self._timer.stop()

    def _pollScoring(self):
        job, ctNode = self._scoring
        code = job.poll()
        if job.device_name:
            self.ui.deviceInUseLabel.text = job.device_name
        if job.total:
            self.ui.progressBar.maximum = job.total
            self.ui.progressBar.value = job.done
            left = job.seconds_left()
            self.ui.statusLabel.text = _("Scored {done} of {total} slices").format(done=job.done, total=job.total) + (
                _(", about {seconds:.0f} s left").format(seconds=left) if left is not None else "")
        if code is None:
            return
        self._scoring = None
        self.ui.applyButton.text = _("Assess Quality")
        self.ui.progressBar.maximum = max(1, job.total)
        if job.cancel_requested:
            job.cleanup()
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.value = 0
            return
        if code != 0:
            job.cleanup()
            self.ui.statusLabel.text = job.error()
            slicer.util.errorDisplay(_("DistilIQA failed: {error}").format(error=job.error()),
                                     detailedText="\n".join(job.log[-40:]))
            return
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not show the results."), waitCursor=True):
            parameters = self._parameterNode
            scores, nodes = self.logic.showScoringResults(job, ctNode, parameters.showOverlay,
                                                          parameters.overlayOpacity)
            self._resultsShown(scores, nodes)

    def _resultsShown(self, scores, nodes):
        self._showSummary(scores)
        self._lastResults = nodes
        self._appliedOverlay = (bool(self._parameterNode.showOverlay), float(self._parameterNode.overlayOpacity))
        self._observeSliceViews()
        self._observePlotClicks()

    def _showSummary(self, scores):
        summary = scores.summary()
        if summary["worst_slices"]:
            text = _("Mean score {mean:.3f}; worst slice {index} (score {worst:.3f}).").format(
                mean=summary["mean_score"], index=summary["worst_slices"][0]["slice_index"],
                worst=summary["worst_slices"][0]["score"])
        else:  # a learned model scores only the slices it can give a verdict on
            text = _("No slice has a score.")
        if summary["fraction_inadequate"] is not None:
            text += " " + _("{percent:.0f}% of slices inadequate.").format(
                percent=100 * summary["fraction_inadequate"])
        from DistilIQALib.quality.results import verdict_line

        verdict = verdict_line(summary)
        if verdict:
            text += "\n" + verdict
        for warning in summary["warnings"]:
            text += "\n" + warning
        self.ui.summaryLabel.text = text
        status = _("{count} slices scored on {device} in {seconds:.1f} s.").format(
            count=summary["num_slices"], device=summary["device"], seconds=summary["elapsed_s"])
        drivers = summary.get("drivers") or {}
        if drivers.get("artefacts"):
            status += " " + _("Verdicts set by the noise: {noise}; by artefacts: {artefacts}.").format(
                noise=drivers.get("noise", 0), artefacts=drivers["artefacts"])
        self.ui.statusLabel.text = status
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
        """The score goes to the overlay corner annotation: DataProbe rewrites ``cornerAnnotation()`` on every
        slice change (DataProbeLib/SliceViewAnnotations.py:384 and :665, Slicer 5.8.1), while
        ``overlayCornerAnnotation()`` (qMRMLSliceWidget.h:124) is left to modules. ``scheduleRender`` lets
        Qt merge the renders of fast scrolling, as DataProbe does (SliceViewAnnotations.py:404)."""
        from DistilIQALib.slicer_bridge.mrml import score_text_at

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            sliceNode = widget.mrmlSliceNode()
            text = ""
            if self._lastResults is not None and sliceNode.GetOrientation() == "Axial":
                text = score_text_at(self._lastResults.table, sliceNode.GetSliceOffset())
            widget.overlayCornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperRight, text)
            widget.sliceView().scheduleRender()

    def _observePlotClicks(self):
        """Clicking a point of a DistilIQA chart moves the slice views to that slice."""
        layoutManager = slicer.app.layoutManager()
        for index in range(layoutManager.plotViewCount):
            view = layoutManager.plotWidget(index).plotView()
            if view not in self._plotViews:
                view.connect("dataSelected(vtkStringArray*, vtkCollection*)", self.onPlotDataSelected)
                self._plotViews.append(view)

    def _disconnectPlotViews(self):
        """After a Reload (slicer.util.reloadScriptedModule calls cleanup(), util.py:1445 in 5.8.1) the plot views
        must not call the old widget: the connections live with this widget, not in a property of the view."""
        for view in self._plotViews:
            view.disconnect("dataSelected(vtkStringArray*, vtkCollection*)", self.onPlotDataSelected)
        self._plotViews = []

    def onPlotDataSelected(self, seriesIds, selections):
        """``seriesIds`` names the plot series clicked, ``selections`` holds each one's table rows: only a
        series drawn from the DistilIQA table moves the views."""
        from DistilIQALib.slicer_bridge.mrml import selected_z

        if self._lastResults is None:
            return
        ids = [seriesIds.GetValue(n) for n in range(seriesIds.GetNumberOfValues())]
        rows = []
        for n in range(selections.GetNumberOfItems()):
            points = selections.GetItemAsObject(n)
            count = points.GetNumberOfTuples() if points is not None else 0
            rows.append([int(points.GetValue(k)) for k in range(count)])
        z = selected_z(slicer.mrmlScene, self._lastResults.table, ids, rows)
        if z is not None:
            self.logic.jumpToZ(z)

    def onWorstSliceClicked(self, row, column):
        item = self.ui.worstSlicesTable.item(row, 1)
        if item is not None:
            self.logic.jumpToZ(float(item.text()))

    # --- background jobs: DICOM database batch, training, site adaptation ----------------------------
    # The rules (one job of a kind at a time, a question before one is cancelled, the model to offer kept with the
    # job) are DistilIQALib.slicer_bridge.jobs.JobBoard's; here only the widgets.

    def _jobBoard(self):
        if self._jobs is None:
            from DistilIQALib.slicer_bridge.jobs import JobBoard

            self._jobs = JobBoard()
        return self._jobs

    def _startJob(self, task, arguments, button, progressBar, logWidget=None, resultPath=None, onSuccess=None):
        """Start ``arguments`` as ``task`` unless a job of its kind runs; then ask whether to cancel that one.
        Errors propagate to the button's own ``tryWithErrorDisplay``: one dialog per error."""
        from DistilIQALib.slicer_bridge.jobs import RunningJob

        board = self._jobBoard()
        action, running = board.request(task)
        if action == "ask":
            if slicer.util.confirmYesNoDisplay(_(board.question(running, task))):
                running.process.cancel()
            return
        if not self.logic.ensureDependencies(arguments):
            return
        process = self.logic.startJob(arguments)
        board.add(RunningJob(task, process, resultPath, (button, button.text, progressBar, logWidget, onSuccess)))
        button.text = _("Cancel")
        progressBar.maximum = 0  # busy until the first progress line
        self._timer.start()

    def _pollJobs(self):
        for job in self._jobBoard().jobs():
            self._pollJob(job)

    def _pollJob(self, job):
        from DistilIQALib.slicer_bridge.jobs import error_line, progress_value

        button, label, progressBar, logWidget, onSuccess = job.widgets
        lines, records, code = job.process.poll()
        job.log = (job.log + lines)[-200:]
        for line in lines:
            if logWidget is not None:
                logWidget.appendPlainText(line)
        for record in records:
            value = progress_value(record)
            if value is not None:
                progressBar.maximum = value[1]
                progressBar.value = value[0]
        if code is None:
            return
        self._jobBoard().finished(job)
        button.text = label
        progressBar.maximum = max(1, progressBar.maximum)
        if code != 0:
            slicer.util.errorDisplay(_("The job ended with an error: {error}").format(error=error_line(job.log)),
                                     detailedText="\n".join(job.log[-40:]))
        elif onSuccess is not None:
            with slicer.util.tryWithErrorDisplay(_("DistilIQA could not show the job's results."), waitCursor=True):
                onSuccess(job)

    def onBatchButton(self):
        with slicer.util.tryWithErrorDisplay(_("DistilIQA could not start the batch."), waitCursor=True):
            arguments = self.logic.batchArguments(self._parameterNode.weightsPath, self._parameterNode.dicomwebUrl)
            self._startJob("batch", arguments, self.ui.batchButton, self.ui.batchProgressBar,
                           onSuccess=self._fillBatchTable)

    def _fillBatchTable(self, job=None):
        self.logic.showExamTable()
        rows = self.logic.batchRows()
        table = self.ui.batchTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (row["patient_id"], row["study_date"], row["description"], row["num_slices"],
                      row["mean_score"], row["min_score"], row["fraction_inadequate"], row.get("region"),
                      row.get("median_dose_equivalent"), row.get("fraction_above_routine"),
                      row.get("artefact_slices"))
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
                loaded = self.logic.loadSeriesWithScores(item.data(qt.Qt.UserRole), parameters.weightsPath,
                                                         parameters.showOverlay, parameters.overlayOpacity)
                if loaded is not None:
                    volume, scores, nodes = loaded
                    parameters.inputVolume = volume
                    self._resultsShown(scores, nodes)

    def onTrainingTask(self, task):
        buttons = {"preprocess": self.ui.preprocessButton, "train-teacher": self.ui.trainTeachersButton,
                   "train-student": self.ui.trainStudentButton, "evaluate": self.ui.evaluateButton}
        with slicer.util.tryWithErrorDisplay(_("Check the training settings."), waitCursor=False):
            from DistilIQALib.slicer_bridge.jobs import result_to_offer

            arguments = self.logic.trainingArguments(task, self._parameterNode)
            self.ui.trainingLog.appendPlainText("$ distiliqa " + " ".join(arguments))
            self._startJob(task, arguments, buttons[task], self.ui.trainingProgressBar, self.ui.trainingLog,
                           result_to_offer(task, self._parameterNode.trainingOutputPath), self._offerModel)

    def onAdaptButton(self):
        with slicer.util.tryWithErrorDisplay(_("Check the adaptation settings."), waitCursor=False):
            from DistilIQALib.slicer_bridge.jobs import result_to_offer

            arguments = self.logic.adaptArguments(self._parameterNode)
            self.ui.trainingLog.appendPlainText("$ distiliqa " + " ".join(arguments))
            self._startJob("recipe", arguments, self.ui.adaptButton, self.ui.trainingProgressBar,
                           self.ui.trainingLog, result_to_offer("recipe", self._parameterNode.trainingOutputPath),
                           self._offerModel)

    def _offerModel(self, job):
        """Offer the model ``job`` wrote (its path was kept with the job: a scene close during the job replaces the
        parameter node, whose output folder may then be empty)."""
        path = job.result_path
        if path is None or not path.is_file():
            return
        question = (_("The model adapted to this site is ready. Use it for Assess Quality?") if job.task == "recipe"
                    else _("A new student model is ready. Use it for Assess Quality?"))
        if slicer.util.confirmYesNoDisplay(question):
            parameters = self._parameterNode if self._parameterNode is not None else self.logic.getParameterNode()
            parameters.weightsPath = pathlib.Path(path)

    def _cancelScoring(self):
        if self._scoring is not None:
            job, _ctNode = self._scoring
            job.cancel()
            job.cleanup()
            self._scoring = None
            self.ui.applyButton.text = _("Assess Quality")
            self.ui.progressBar.maximum = 1
            self.ui.progressBar.value = 0

    def cancelEverything(self):
        self._cancelScoring()
        if self._jobs is not None:
            for job in self._jobs.jobs():
                job.process.cancel()
                self._jobs.finished(job)


class DistilIQALogic(ScriptedLoadableModuleLogic):
    """Script-friendly entry points; the engine does the work, in a child process for anything long."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DistilIQAParameterNode(super().getParameterNode())

    def ensureDependencies(self, arguments=None, askConfirmation=True):
        """Install what the job ``arguments`` (``None``: Assess Quality) needs and Slicer lacks, after one question
        naming all of it: PyTorch through the PyTorch extension (``PyTorchUtilsLogic.installTorch(askConfirmation)``
        of SlicerPyTorch's PyTorchUtils.py picks the build for the GPU), the rest with ``slicer.util.pip_install``
        (util.py:3899 in 5.8.1). A package Slicer
        bundles is never installed or replaced. Only looked up here, never imported: Slicer's process does not
        load PyTorch; the rules are DistilIQALib.slicer_bridge.dependencies'."""
        from DistilIQALib.slicer_bridge.dependencies import plan_for

        plan = plan_for(arguments)
        if plan.broken:
            raise RuntimeError(_(plan.broken_error()))
        if plan.ready:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(_(plan.question())):
            return False
        if plan.torch:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("DistilIQA needs the PyTorch extension: install 'PyTorch' from the "
                                     "Extensions Manager and restart Slicer.")) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                return False
        if plan.pip:
            try:
                slicer.util.pip_install(plan.pip)
            except Exception as error:
                raise RuntimeError(_("Installing {packages} failed ({error}). Check the network connection and "
                                     "try again.").format(packages=", ".join(plan.pip), error=error)) from None
        return True

    def startScoring(self, ctNode, weightsPath=None, device="auto", batchSize=0, region="auto"):
        """Start ``score`` in a child process on the DICOM files ``ctNode`` was loaded from (their headers carry the
        kernel, reconstruction and delivered dose), or else on a temporary NRRD of it; returns the
        :class:`DistilIQALib.slicer_bridge.jobs.ScoreJob` (poll it, cancel it, then :meth:`showScoringResults`)."""
        from DistilIQALib.slicer_bridge.jobs import ScoreJob
        from DistilIQALib.slicer_bridge.mrml import dicom_series_of, write_volume_file

        workDir = tempfile.mkdtemp(prefix="DistilIQA-")
        try:
            database = getattr(slicer, "dicomDatabase", None)
            series = dicom_series_of(ctNode, database.fileForInstance) if database and database.isOpen else None
            if series:
                return ScoreJob(series[0], workDir, weightsPath, device, batchSize or 0, self._pythonSlicer(),
                                region=region, series_uid=series[1])
            volumeFile = write_volume_file(ctNode, os.path.join(workDir, "volume.nrrd"))
            return ScoreJob(volumeFile, workDir, weightsPath, device, batchSize or 0, self._pythonSlicer(),
                            region=region)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    def showScoringResults(self, job, ctNode, showOverlay=True, opacity=0.35):
        """Read a finished run's results and create or update ``ctNode``'s result nodes; returns
        ``(scores, nodes)``. The run's temporary folder is removed."""
        from DistilIQALib.slicer_bridge.mrml import show_stored_results

        try:
            scores = job.results()
        finally:
            job.cleanup()
        # Matched by z: the file reader and the node need not order the axial slices alike.
        return scores, self._present(ctNode, show_stored_results(ctNode, scores), showOverlay, opacity)

    def process(self, ctNode, weightsPath=None, device="auto", batchSize=0, showOverlay=True, timeoutS=None,
                region="auto"):
        """Score ``ctNode`` and create its result nodes, waiting for the child process (scripts and tests)."""
        job = self.startScoring(ctNode, weightsPath, device, batchSize, region)
        try:
            code = job.wait(timeoutS)
        except BaseException:
            job.cancel()
            job.cleanup()
            raise
        if code != 0:
            job.cleanup()
            raise RuntimeError(job.error())
        return self.showScoringResults(job, ctNode, showOverlay)[1]

    def _present(self, ctNode, nodes, showOverlay, opacity):
        from DistilIQALib.slicer_bridge import mrml

        mrml.show_in_slice_views(slicer.mrmlScene, ctNode, nodes.quality_map if showOverlay else None, opacity)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
            slicer.modules.plots.logic().ShowChartInLayout(nodes.adequacy_chart)
        return nodes

    def setOverlay(self, qualityMap, show=True, opacity=0.35):
        """Show or hide the quality map over the slice views; the CT and its window/level stay as they are."""
        from DistilIQALib.slicer_bridge import mrml

        mrml.set_overlay(slicer.mrmlScene, qualityMap if show else None, opacity)

    def jumpToZ(self, zMm):
        for name in ("Red",):
            sliceNode = slicer.app.layoutManager().sliceWidget(name).mrmlSliceNode()
            sliceNode.SetSliceOffset(zMm)

    def batchStore(self):
        return os.path.join(slicer.dicomDatabase.databaseDirectory, "DistilIQA_results.sqlite")

    def batchArguments(self, weightsPath=None, dicomwebUrl=""):
        """Score Slicer's DICOM database, or the DICOMweb server ``dicomwebUrl`` when one is given (its
        credentials, if any, from the environment variable ``DISTILIQA_DICOMWEB_AUTH``)."""
        from DistilIQALib.slicer_bridge.jobs import batch_arguments

        if not slicer.dicomDatabase or not slicer.dicomDatabase.isOpen:
            raise RuntimeError(_("Slicer's DICOM database is not open."))
        return batch_arguments(slicer.dicomDatabase.databaseDirectory, self.batchStore(), weightsPath, dicomwebUrl)

    def batchRows(self):
        from DistilIQALib.archive.store import ResultStore

        with ResultStore(self.batchStore()) as store:
            return [row for row in store.series_rows() if row["status"] == "scored"]

    def showExamTable(self):
        """The batch store's exam table (one row per study, with the CMS CT measure's inputs and check) as the
        table node "DistilIQA exams", shown in the layout's table view."""
        from DistilIQALib.archive.exam_report import stored_exam_rows
        from DistilIQALib.archive.exams import store_exam_rows
        from DistilIQALib.archive.store import ResultStore
        from DistilIQALib.slicer_bridge.mrml import show_exam_table, show_table_in_views

        with ResultStore(self.batchStore()) as store:
            rows = stored_exam_rows(store)
            rows = store_exam_rows(store) if rows is None else rows
        node = show_exam_table(slicer.mrmlScene, rows)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            # a layout with a table view, as Slicer's script repository shows a table (models.md:70-72)
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        show_table_in_views(slicer.app.applicationLogic(), node)
        return node

    def exportBatch(self, path):
        from DistilIQALib.archive.stored import write_summary_csv

        write_summary_csv(self.batchStore(), path)

    def loadSeriesWithScores(self, seriesUid, weightsPath=None, showOverlay=True, opacity=0.35):
        """Load a series from the DICOM database and show the scores the batch run stored for it (no
        rescoring); returns ``(volume node, scores, result nodes)`` or None when nothing loaded."""
        from DICOMLib import DICOMUtils

        from DistilIQALib.archive.stored import stored_scores
        from DistilIQALib.slicer_bridge.jobs import chosen_path
        from DistilIQALib.slicer_bridge.mrml import show_stored_results

        loaded = DICOMUtils.loadSeriesByUID([seriesUid])
        if not loaded and not slicer.dicomDatabase.filesForSeries(seriesUid):
            raise RuntimeError(_("This series is not in Slicer's DICOM database (it was scored from a DICOMweb "
                                 "server): retrieve it with the DICOM module, then double-click it again."))
        node = slicer.mrmlScene.GetNodeByID(loaded[0]) if loaded else None
        if node is None:
            return None
        scores = stored_scores(self.batchStore(), seriesUid, chosen_path(weightsPath))
        return node, scores, self._present(node, show_stored_results(node, scores), showOverlay, opacity)

    def trainingArguments(self, task, parameters):
        from DistilIQALib.slicer_bridge.jobs import training_arguments

        return training_arguments(task, parameters.datasetPath, parameters.datasetType, parameters.trainingOutputPath,
                                  parameters.teacherPreset, parameters.studentPreset, parameters.folds,
                                  parameters.epochs, parameters.trainingBatchSize, parameters.learningRate,
                                  parameters.distillationWeight, parameters.trainingDevice)

    def adaptArguments(self, parameters):
        """*Adapt to this site*: the recipe on the dataset folder's CT, from the selected model if any."""
        from DistilIQALib.slicer_bridge.jobs import adapt_arguments

        return adapt_arguments(parameters.trainingOutputPath, parameters.datasetPath, parameters.weightsPath,
                               parameters.trainingDevice)

    def startJob(self, arguments):
        from DistilIQALib.slicer_bridge.background import BackgroundProcess, engine_command
        from DistilIQALib.slicer_bridge.jobs import engine_environment

        return BackgroundProcess(engine_command(arguments, self._pythonSlicer()), env=engine_environment())

    def _pythonSlicer(self):
        """Slicer's own Python launcher (it sets up Slicer's library paths), as SlicerMONAIAuto3DSeg uses it."""
        return shutil.which("PythonSlicer") or sys.executable


class DistilIQATest(ScriptedLoadableModuleTest):
    """Runs the whole flow inside Slicer on a generated CT volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PanelBindings()
        self.setUp()
        self.test_AssessQuality()
        self.setUp()
        self.test_CancelScoring()

    def test_PanelBindings(self):
        """The panel loads, binds every widget and keeps the .ui's ranges and items."""
        widget = slicer.modules.distiliqa.widgetRepresentation().self()
        ui = widget.ui
        self.assertEqual((ui.foldsSpinBox.minimum, ui.foldsSpinBox.maximum), (2, 10))
        self.assertEqual((ui.batchSizeSpinBox.minimum, ui.batchSizeSpinBox.maximum), (0, 256))
        self.assertEqual((ui.overlayOpacitySpinBox.minimum, ui.overlayOpacitySpinBox.maximum), (0.0, 1.0))
        self.assertEqual([ui.deviceComboBox.itemText(n) for n in range(ui.deviceComboBox.count)],
                         ["auto", "cpu", "cuda"])
        for _repeat in range(3):
            widget.exit()
            widget.enter()
        ui.overlayOpacitySpinBox.value = 0.6
        self.assertAlmostEqual(widget._parameterNode.overlayOpacity, 0.6)
        ui.dicomwebUrlLineEdit.text = "http://127.0.0.1:8042/dicom-web"
        self.assertEqual(widget._parameterNode.dicomwebUrl, "http://127.0.0.1:8042/dicom-web")
        ui.dicomwebUrlLineEdit.text = ""

    def test_CancelScoring(self):
        """Cancel stops the scoring process: no result nodes, no process left."""
        import time

        import numpy as np

        from DistilIQALib.training.phantoms import phantom_volume

        ct = slicer.util.addVolumeFromArray(np.rint(phantom_volume(60, size=512, seed=1)).astype(np.int16))
        job = DistilIQALogic().startScoring(ct, None, "cpu", 0)
        deadline = time.monotonic() + 120
        while job.poll() is None and job.total == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        job.cancel()
        self.assertIsNotNone(job.wait(30))
        job.cleanup()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"), 0)

    def test_AssessQuality(self):
        import numpy as np

        from DistilIQALib.quality.model_info import default_weights_path
        from DistilIQALib.training.phantoms import phantom_volume, textured_noise

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
            # a learned model leaves slices without a verdict unscored (NaN): compare the scored ones
            scores = np.array([table.GetValue(row, 2).ToDouble() for row in range(24)])
            self.assertLess(np.nanmax(scores[10:14]), np.nanmin(np.delete(scores, range(10, 14))))
        again = logic.process(ct, str(weights), device="auto")
        self.assertEqual(again.table.GetID(), nodes.table.GetID())
        self.delayDisplay("DistilIQA self-test passed")

    def _trainTinyModel(self):
        import tempfile

        from DistilIQALib.slicer_bridge.background import engine_command
        from DistilIQALib.slicer_bridge.jobs import engine_environment
        from DistilIQALib.training.sample import write_tcia_like

        folder = tempfile.mkdtemp()
        data = write_tcia_like(os.path.join(folder, "tcia"), cases=("C001", "C002", "C003"), slices=2, i0=2e4)
        import subprocess

        for arguments in (["preprocess", str(data), "--type", "tcia", "--train-cases", "C001", "C002",
                           "--test-cases", "C003"],
                          ["train-teacher", str(data), "--output", folder, "--preset", "tiny", "--input-size", "256",
                           "--epochs", "2", "--folds", "2", "--batch-size", "4", "--purpose", "test"],
                          ["train-student", str(data), "--output", folder, "--preset", "tiny", "--input-size", "256",
                           "--epochs", "2", "--folds", "2", "--batch-size", "4", "--purpose", "test"]):
            subprocess.run(engine_command(arguments, DistilIQALogic()._pythonSlicer()), check=True,
                           env={**os.environ, **engine_environment()})
        return os.path.join(folder, "student.safetensors")
