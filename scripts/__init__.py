"""Phase synthesis for magnitude-only MRI: the bundle's Python package.

Modules are named after the domain they own: ``fastmri_h5`` (fastMRI-format files),
``magnitude_io`` (DICOM/NIfTI/PNG/TIFF readers), ``physics`` (B0/RF phase),
``simulate`` (the embedded simulated complex brain dataset), ``phase_metrics``
(phase-realism statistics).
"""
