"""Numerical building blocks with no I/O: FFT, intensity, complex/phase, masks, metrics, physics, ESPIRiT, SENSE."""
