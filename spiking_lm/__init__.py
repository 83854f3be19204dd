"""spiking_lm."""
