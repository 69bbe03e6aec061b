"""Regenerate the golden state_dict key/shape files from the official model definitions.

    python python_tests/golden/make_golden.py /path/to/Skip-DiT/class-to-image

The folder must hold the official Skip-DiT ``models.py`` (needs timm). Writes
``dit_xl_2_keys.json`` and ``dit_xl_2_skip_keys.json`` beside this script.
"""

import json
import pathlib
import sys

import torch

here = pathlib.Path(__file__).parent
sys.path.insert(0, sys.argv[1])
import models as official  # noqa: E402

torch.set_default_device("meta")
for name, factory in (("dit_xl_2", official.DiT_XL_2), ("dit_xl_2_skip", official.DiT_XL_2_skip)):
    try:
        model = factory()
    except NotImplementedError:  # initialize_weights copies numpy data, which meta tensors refuse
        torch.set_default_device("cpu")
        model = factory()
        torch.set_default_device("meta")
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    (here / f"{name}_keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True) + "\n")
    print(name, len(keys), "keys")
