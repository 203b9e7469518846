"""Files in and out: reading CT images into a :class:`~DistilIQALib.volume.CTVolume`, writing DICOM series, and
writing one scan's results (CSV, JSON, plot).

Imports ``quality`` (the window, the scores it writes) and the shared pieces; never ``archive``, ``training`` or
``slicer_bridge``.
"""
