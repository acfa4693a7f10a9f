"""Reconstruction: VarNet, L1-wavelet, complex diffusion priors with posterior sampling, evaluation."""
