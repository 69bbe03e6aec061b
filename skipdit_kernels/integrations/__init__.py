"""Integrations with other libraries. Each lives in its own submodule and imports its library only
there (``skipdit_kernels.integrations.diffusers`` needs ``pip install skipdit-kernels[diffusers]``);
importing this package imports nothing else."""
