"""What the package reads and writes outside its models: weight files (``files``), images and videos
out of latents (``images``) and the ``SKIPDIT_*`` environment variables (``environment``). Each
module is imported on its own; ``environment`` imports nothing heavy, so ``skipdit info`` can."""
