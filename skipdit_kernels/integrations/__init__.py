"""Optional integrations and models built on other libraries: each module is imported on its own
(``skipdit_kernels.integrations.<name>``) and may need an extra dependency (``diffusers``);
nothing here is imported by ``skipdit_kernels`` itself."""
