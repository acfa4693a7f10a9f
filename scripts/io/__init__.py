"""Files: fastMRI h5, magnitude images, real complex slices, atomic writes, CSV tables, checkpoints."""
