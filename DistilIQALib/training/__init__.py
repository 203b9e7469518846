"""Making a model: datasets, dose and sparse-view simulation (tomography, phantoms), the real-CT corpus, teacher
and student training, evaluation, the shipped model's recipe, and the demo's sample CT.

Imports ``quality``, ``io`` and the shared pieces; never ``archive`` or ``slicer_bridge``.
"""
