"""Optional integrations: each module is imported on its own (``skipdit_kernels.integrations.<name>``)
and may need an extra dependency; nothing here is imported by ``skipdit_kernels`` itself."""
