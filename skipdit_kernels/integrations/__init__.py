"""Models built on other libraries (imported on demand: ``diffusers`` is optional)."""
