"""Regenerate the text-to-video Latte-skip golden files from the official definitions.

    python python_tests/golden/make_golden_latte_t2v.py /path/to/Skip-DiT/text-to-video

The official ``models/latte_t2v_skip.py`` needs einops and an older diffusers (0.24: it imports
``CaptionProjection`` and ``LoRACompatibleConv``; hide an incompatible ``transformers``). Writes
beside this script ``latte_t2v_skip_keys.json`` (state_dict keys and shapes of the released
size, Latte-1 with skips) and ``latte_t2v_skip_tiny_outputs.safetensors``: the official forward
of a tiny 28-pair model (the official code hard-codes 14 + 14 pairs) with ``golden_weights`` on
fixed inputs, with and without a text attention mask.
"""

import json
import pathlib
import sys

import torch

here = pathlib.Path(__file__).parent
sys.path.insert(0, str(here))
from make_golden_latte import golden_weights  # noqa: E402

LATTE_1 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=4096, video_length=16,
)  # fmt: skip
TINY = {**LATTE_1, "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16, "sample_size": 4,
        "caption_channels": 12, "video_length": 3}  # fmt: skip


def golden_inputs():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    t = torch.tensor([17, 873])
    text = torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return x, t, text, mask


if __name__ == "__main__":
    sys.modules.setdefault("transformers", None)
    sys.path.insert(0, str(pathlib.Path(sys.argv[1]) / "models"))
    from latte_t2v_skip import LatteT2V_skip  # noqa: E402

    model = LatteT2V_skip(**LATTE_1)  # on the CPU: its init converts a tensor through numpy
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    (here / "latte_t2v_skip_keys.json").write_text(json.dumps(keys, indent=0, sort_keys=True) + "\n")
    print(len(keys), "keys")
    model = LatteT2V_skip(**TINY).eval()
    golden_weights(model)
    x, t, text, mask = golden_inputs()
    with torch.no_grad():
        outputs = {
            "no_mask": model(x, t, text, return_dict=False)[0].contiguous(),
            "mask": model(x, t, text, encoder_attention_mask=mask, return_dict=False)[0].contiguous(),
        }
    from safetensors.torch import save_file

    save_file(outputs, str(here / "latte_t2v_skip_tiny_outputs.safetensors"))
    print({k: tuple(v.shape) for k, v in outputs.items()})
