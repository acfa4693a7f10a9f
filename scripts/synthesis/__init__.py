"""Synthesis: magnitude-only inputs -> sampled phase -> coils -> fastMRI k-space; phase inference outputs."""
