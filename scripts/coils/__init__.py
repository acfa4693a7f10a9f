"""Coil sensitivity maps (birdcage, ESPIRiT bank) and multi-coil k-space simulation."""
