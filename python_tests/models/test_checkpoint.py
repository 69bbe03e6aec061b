import argparse
import os

import pytest
import torch

import skipdit_kernels as sk

from .conftest import TINY, randomize


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cls", [sk.DiT, sk.SkipDiT])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_infers_class_and_size(cls, suffix, tmp_path):
    model = randomize(cls(**TINY))
    path = tmp_path / f"model{suffix}"
    sk.save_checkpoint(model, path)
    loaded = sk.load_checkpoint(path)
    assert type(loaded) is cls
    assert loaded.config == model.config
    assert same_weights(loaded, model)


def test_train_checkpoint_prefers_ema_and_allows_args(tmp_path):
    model, ema = randomize(sk.SkipDiT(**TINY), seed=1), randomize(sk.SkipDiT(**TINY), seed=2)
    path = tmp_path / "0400000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    assert same_weights(sk.load_checkpoint(path), ema)


def test_load_into_given_model(tmp_path):
    model = randomize(sk.SkipDiT(**TINY))
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict()}, path)
    target = sk.SkipDiT(**TINY)
    assert sk.load_checkpoint(path, target) is target
    assert same_weights(target, model)


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    path = tmp_path / "skip.safetensors"
    sk.save_checkpoint(sk.SkipDiT(**TINY), path)
    wider = sk.DiT(**{**TINY, "hidden_size": 128})
    with pytest.raises(sk.CheckpointError) as info:
        sk.load_checkpoint(path, wider)
    message = str(info.value)
    assert "unexpected" in message and "skip_linears.0.linear.weight" in message
    assert "mis-shaped (71)" in message and "blocks.0.attn.proj.bias: checkpoint (64,) vs model (128,)" in message
    deeper = sk.DiT(**{**TINY, "depth": 8})
    with pytest.raises(sk.CheckpointError, match=r"missing \(20\)"):
        sk.load_checkpoint(path, deeper)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(sk.CheckpointError, match="refusing to load"):
        sk.load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(sk.CheckpointError, match="not found"):
        sk.load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"0")
    with pytest.raises(sk.CheckpointError, match="unsupported checkpoint type"):
        sk.load_checkpoint(bad)


def test_inferred_preset_uses_official_heads(tmp_path):
    with torch.device("meta"):
        model = sk.SkipDiT.from_preset("DiT-S/8", input_size=16, num_classes=10)
    from skipdit_kernels.models.checkpoint import infer_config

    cls, config = infer_config(model.state_dict())
    assert cls is sk.SkipDiT and config["num_heads"] == 6 and config["depth"] == 12 and config["input_size"] == 16
