import pytest
import torch

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=6, num_heads=4, num_classes=10)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random non-zero weights everywhere (the official init zeroes adaLN and the output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture
def tiny_config():
    return dict(TINY)
