"""Recipes (YAML) and accelerate/DeepSpeed launch configs, shipped inside the package as ``spiking_lm.recipe_files``:
`spiking-lm recipes` lists them and `spiking-lm distill NAME` runs one by name."""
