"""Finding the CUDA toolkit root without importing the package (setup.py loads this file by path).

The nvcc on PATH may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc that execs
/usr/local/cuda-13.0/bin/nvcc), which makes torch guess CUDA_HOME=/usr/local. The root is the folder
whose bin/ holds the real nvcc and whose lib/ or lib64/ holds libcudart.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess


def _is_toolkit_root(root: str | None) -> bool:
    if not root or not os.path.isfile(os.path.join(root, "bin", "nvcc")):
        return False
    return any(glob.glob(os.path.join(root, lib, "libcudart.so*")) for lib in ("lib64", "lib", "targets/*/lib"))


def cudart_dir(root: str) -> str | None:
    for lib in ("lib64", "lib", "targets/*/lib"):
        hits = glob.glob(os.path.join(root, lib, "libcudart.so*"))
        if hits:
            return os.path.dirname(hits[0])
    return None


def _ask_nvcc(nvcc: str) -> str | None:
    """nvcc's dry run names its own installation (`#$ TOP=<root>/bin/..`), whatever wrapper called it."""
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit root, or None. CUDA_HOME / CUDA_PATH win when they hold a toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if _is_toolkit_root(root):
            return os.path.realpath(root)
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_ask_nvcc(nvcc))
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    for root in candidates:
        if _is_toolkit_root(root):
            return os.path.realpath(root)
    return None


if __name__ == "__main__":  # prints the root for shell scripts (.ci/native.sh); exit 1 when none
    import sys

    root = find_cuda_home()
    if root is None:
        sys.exit(1)
    print(root)
