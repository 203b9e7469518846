"""Judging a CT slice: the network and the physics.

Preprocessing, the model and its weights files, the compute device, the scorer, the noise index, body regions,
the verdicts (adequacy, dose equivalent) and the image metrics. Imports only the engine's shared pieces
(``errors``, ``progress``, ``volume``): never ``io``, ``archive``, ``training`` or ``slicer_bridge``.
"""
