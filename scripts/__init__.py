"""Phase synthesis for magnitude-only MRI: the bundle's Python package.

One sub-package per pipeline stage; imports only point down this list (no cycles):

- ``core``: FFT, intensity, complex/phase helpers, masks, metrics, B0/RF physics, ESPIRiT, SENSE
- ``io``: fastMRI h5, magnitude readers (DICOM/NIfTI/PNG/TIFF), real ``.mat`` slices, atomic writes, CSV tables, checkpoints
- ``coils``: coil sensitivity maps (birdcage, ESPIRiT bank) and multi-coil k-space simulation
- ``simulate``: the embedded simulated complex brain dataset
- ``phase``: phase sources, the conditional diffusion and GAN phase models, paired data, realism
- ``synthesis``: magnitude archive -> phase -> coils -> fastMRI k-space; phase inference outputs
- ``recon``: VarNet, L1-wavelet, complex priors and posterior sampling, evaluation
- ``studies``: the stage runner, the VarNet study, the prior study, their reports, the gallery
"""
