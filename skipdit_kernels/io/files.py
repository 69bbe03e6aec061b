"""Writing weight files with the file mode of any other file the user writes."""

from __future__ import annotations

import os


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the usual file mode (0644 under umask 022).

    safetensors >= 0.8 writes through a temporary file created 0600 and renames it into place, so its
    files are unreadable to other users (safetensors issue #782); here the serialised bytes go
    through an ordinary ``open``, which honours the umask. Costs one in-memory copy of the file."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    with open(os.fspath(path), "wb") as f:
        f.write(data)
