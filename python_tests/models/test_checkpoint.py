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
    assert same_weights(sk.load_checkpoint(path, num_heads=4, num_classes=10), ema)


def test_load_into_given_model(tmp_path):
    model = randomize(sk.SkipDiT(**TINY))
    path = tmp_path / "m.pth"
    torch.save({"model": model.state_dict()}, path)
    target = sk.SkipDiT(**TINY)
    assert sk.load_checkpoint(path, target) is target
    assert same_weights(target, model)


def test_mismatch_summary_line_then_capped_key_lists(tmp_path):
    path = tmp_path / "skip.safetensors"
    sk.save_checkpoint(sk.SkipDiT(**TINY), path)
    wider = sk.DiT(**{**TINY, "hidden_size": 128})
    with pytest.raises(sk.CheckpointError) as info:
        sk.load_checkpoint(path, wider)
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "checkpoint does not fit the model: checkpoint: hidden 64, depth 6, SkipDiT; model: hidden 128, depth 6, DiT"
    )
    assert "unexpected (12):" in lines and "    ... and 2 more" in lines and "    skip_linears.0.linear.weight" in lines
    assert "mis-shaped (71):" in lines and "    ... and 61 more" in lines
    assert "    blocks.0.adaLN_modulation.1.bias: checkpoint (384,) vs model (768,)" in lines
    assert max(len(line) for line in lines) < 120  # one key a line
    deeper = sk.DiT(**{**TINY, "depth": 8})
    with pytest.raises(sk.CheckpointError, match=r"missing \(20\):"):
        sk.load_checkpoint(path, deeper)


def test_heads_differing_from_the_carried_config_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    sk.save_checkpoint(sk.SkipDiT(**TINY), path)
    one_head = sk.SkipDiT(**{**TINY, "num_heads": 1})  # every shape fits
    with pytest.raises(
        sk.CheckpointError, match="checkpoint: hidden 64, depth 6, 4 heads, SkipDiT; model: hidden 64, depth 6, 1 heads"
    ):
        sk.load_checkpoint(path, one_head)


def _out(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([5.0, 500.0]), torch.tensor([3, 7]))


def test_train_state_builds_the_trained_architecture(tmp_path):
    """skipdit train's train_state.pt (hidden 64, 4 heads: no official size) loads with 4 heads."""
    from skipdit_kernels.training.loop import save_state

    model, ema = randomize(sk.SkipDiT(**TINY), seed=1), randomize(sk.SkipDiT(**TINY), seed=2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "train_state.pt"
    save_state(str(path), model, ema, optimizer, 3)
    loaded = sk.load_checkpoint(path)
    assert loaded.num_heads == 4 and loaded.config == ema.config
    assert torch.equal(_out(loaded.eval()), _out(ema))


def test_config_less_checkpoint_of_no_official_size_needs_heads_and_classes(tmp_path):
    model = randomize(sk.DiT(**{**TINY, "class_dropout_prob": 0.0}))
    path = tmp_path / "raw.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(
        sk.CheckpointError, match=r"num_heads and num_classes \(or class_dropout_prob\).*hidden 64, depth 6"
    ):
        sk.load_checkpoint(path)
    with pytest.raises(sk.CheckpointError, match="num_classes"):
        sk.load_checkpoint(path, num_heads=4)
    with pytest.raises(sk.CheckpointError, match="cannot hold num_classes=7"):
        sk.load_checkpoint(path, num_heads=4, num_classes=7)
    loaded = sk.load_checkpoint(path, num_heads=4, num_classes=10)
    assert not loaded.y_embedder.has_null_class and loaded.config == model.config
    assert torch.equal(_out(loaded), _out(model))
    assert sk.load_checkpoint(path, num_heads=4, class_dropout_prob=0.0).config == model.config


def test_format_comes_from_the_content(tmp_path):
    model = randomize(sk.SkipDiT(**TINY))
    safetensors_named_bin = tmp_path / "weights.bin"
    sk.save_checkpoint(model, tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").rename(safetensors_named_bin)
    assert same_weights(sk.load_checkpoint(safetensors_named_bin), model)


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.pt", b"hello, these are not weights\n"),
        ("empty.pt", b""),
        ("random.safetensors", bytes(range(256)) * 4),
        ("weights.npz", None),  # a zip, but not torch's
        ("truncated.pt", "truncate"),
    ],
    ids=["text", "empty", "random-bytes", "numpy-zip", "truncated-torch"],
)
def test_not_a_checkpoint_says_so_without_internal_codes(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        import numpy as np

        np.savez(path, w=np.zeros(3))
    elif content == "truncate":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(content)
    with pytest.raises(sk.CheckpointError) as info:
        sk.load_checkpoint(path)
    message = str(info.value)
    assert "is not a torch checkpoint or safetensors file" in message
    for internal in ("load key", "PytorchStreamReader", "HeaderTooLarge", "Error while", "central directory"):
        assert internal not in message


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload()}, path)
    with pytest.raises(sk.CheckpointError) as info:
        sk.load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"refusing to load {path}: besides tensors it holds Python objects (posix.system)")
    assert "weights_only" not in message and "WeightsUnpickler" not in message
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(sk.CheckpointError, match="not found"):
        sk.load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"0")
    with pytest.raises(sk.CheckpointError, match="is not a torch checkpoint or safetensors file"):
        sk.load_checkpoint(bad)


def test_inferred_preset_uses_official_heads(tmp_path):
    with torch.device("meta"):
        model = sk.SkipDiT.from_preset("DiT-S/8", input_size=16, num_classes=10)
    from skipdit_kernels.models.checkpoint import infer_config

    cls, config = infer_config(model.state_dict())
    assert cls is sk.SkipDiT and config["num_heads"] == 6 and config["depth"] == 12 and config["input_size"] == 16


def test_saved_weight_files_get_the_mode_of_any_other_file(tmp_path):
    """safetensors writes 0600 files; ours get 0666 minus the umask, like any file the user writes."""
    umask = os.umask(0o022)
    os.umask(umask)
    model = sk.DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=3)
    for name in ("w.safetensors", "w.pt"):
        sk.save_checkpoint(model, tmp_path / name)
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
