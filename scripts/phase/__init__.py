"""Phase: sources (baselines and learned), the diffusion and GAN phase models, paired data, realism metrics."""
