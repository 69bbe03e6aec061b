"""Regenerate the Latte-skip golden files from the official class-to-video definitions.

    python python_tests/golden/make_golden_latte.py /path/to/Skip-DiT/class-to-video

The folder must hold the official ``models/latte.py`` (needs timm, einops). Writes beside this script:
``latte_xl_2_skip_{ucf101,uncond}_keys.json`` (state_dict keys and shapes of Latte-XL/2-skip,
class-conditional with 101 classes and unconditional) and ``latte_skip_tiny_outputs.safetensors``:
the official ``Latte_skip`` forward of a tiny 14-pair model (the official code hard-codes 14 pairs)
whose weights are ``golden_weights`` (below, mirrored in the tests), on fixed inputs.
"""

import importlib.util
import json
import pathlib
import sys
import zlib

import torch

here = pathlib.Path(__file__).parent
TINY = dict(
    input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=28, num_heads=2, num_frames=3, num_classes=5
)


def golden_weights(model: torch.nn.Module) -> None:
    """Every state_dict entry from its own generator, seeded by the key's CRC-32 (order-free)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)


def golden_inputs(extras: int):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, TINY["num_frames"], TINY["in_channels"], TINY["input_size"], TINY["input_size"], generator=g)
    t = torch.tensor([17, 873])
    y = torch.tensor([3, TINY["num_classes"]]) if extras == 2 else None  # the second: the null class
    return x, t, y


if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("latte_official", pathlib.Path(sys.argv[1]) / "models" / "latte.py")
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    for extras, name in ((2, "ucf101"), (1, "uncond")):
        model = official.Latte_XL_2_skip(input_size=32, num_classes=101, num_frames=16, learn_sigma=True, extras=extras)
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        (here / f"latte_xl_2_skip_{name}_keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True) + "\n")
        print(name, len(keys), "keys")
    outputs = {}
    for extras in (2, 1):
        model = official.Latte_skip(**TINY, extras=extras).eval()
        golden_weights(model)
        x, t, y = golden_inputs(extras)
        with torch.no_grad():
            outputs[f"extras{extras}"] = model(x, t, y).contiguous()
    from safetensors.torch import save_file

    save_file(outputs, str(here / "latte_skip_tiny_outputs.safetensors"))
    print("outputs", {k: tuple(v.shape) for k, v in outputs.items()})
