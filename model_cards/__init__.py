"""Model-card templates (Jinja), shipped inside the package as ``spiking_lm.model_cards``."""
