"""Talking to Slicer: result nodes in the MRML scene, the panel's jobs as command lines, and the background
process that runs them. ``mrml`` is the only module of the engine that imports ``slicer`` (MRML classes and
``slicer.util``, never Qt or the application).

Imports ``quality``, ``io`` and the shared pieces; never ``archive`` or ``training``.
"""
