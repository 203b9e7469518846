"""Quality control of an archive: finding the CT series of a folder tree or a Slicer DICOM database, the batch
run, its SQLite store and HTML report, the DICOMweb client and the DICOM C-STORE receiver.

Imports ``quality``, ``io`` and the shared pieces; never ``training`` or ``slicer_bridge``.
"""
