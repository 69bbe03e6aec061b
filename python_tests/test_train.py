import json
import os

import pytest
import torch
from safetensors.torch import load_file

import skipdit_kernels as sk
from skipdit_kernels.cli import main
from skipdit_kernels.train import STATE_FILE, build_model, train

CFG = dict(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=3,
           learn_sigma=True, class_dropout_prob=0.2)


def data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("kind", ["skipdit", "dit"])
def test_resume_gives_the_same_losses(tmp_path, kind):
    torch.manual_seed(1)
    straight = train(build_model(kind, **CFG), data(), steps=6, batch_size=8, lr=1e-3, seed=3,
                     out_dir=tmp_path / "a", progress=False, threads=1, log_every=2)
    assert len(straight.losses) == 6
    torch.manual_seed(1)
    first = train(build_model(kind, **CFG), data(), steps=3, batch_size=8, lr=1e-3, seed=3,
                  out_dir=tmp_path / "b", progress=False, threads=1, log_every=2)
    # a differently initialised model: everything must come from the saved state
    torch.manual_seed(99)
    resumed = train(build_model(kind, **CFG), data(), steps=6, batch_size=8, lr=1e-3, seed=3,
                    out_dir=tmp_path / "b", progress=False, threads=1, log_every=2)
    assert first.losses + resumed.losses == straight.losses
    assert resumed.step == 6
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]


def test_checkpoint_files_load_safely(tmp_path):
    result = train(build_model("skipdit", **CFG), data(), steps=2, batch_size=4, seed=0, out_dir=tmp_path,
                   progress=False, threads=1)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and set(state) >= {"model", "ema", "optimizer", "rng", "config"}
    model = sk.load_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(model, sk.SkipDiT) and model.config == result.ema.config
    for k, v in load_file(tmp_path / "model.safetensors").items():
        assert torch.equal(v, result.ema.state_dict()[k])  # the model file holds the EMA weights


def test_training_reduces_the_loss_and_uses_class_dropout():
    torch.manual_seed(0)
    model = build_model("dit", **CFG)
    seen = []
    orig = model.y_embedder.forward
    model.y_embedder.forward = lambda y, train_, *a, **k: (seen.append(train_), orig(y, train_, *a, **k))[1]
    r = train(model, data(8), steps=40, batch_size=8, lr=3e-3, seed=0, progress=False, threads=1)
    assert seen and all(seen)  # labels are embedded in training mode: class dropout is on
    assert sum(r.losses[-10:]) < sum(r.losses[:10])
    assert not model.training and not r.ema.training


def test_rejects_mismatched_data():
    with pytest.raises(ValueError, match="do not fit"):
        train(build_model("dit", **CFG), (torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)), steps=1,
              progress=False)
    with pytest.raises(ValueError, match="classes"):
        train(build_model("dit", **CFG), (torch.zeros(4, 1, 8, 8), torch.full((4,), 7)), steps=1, progress=False)


def test_cli_train_on_a_tensor_file(tmp_path, capsys):
    x, y = data()
    torch.save({"images": x, "labels": y}, tmp_path / "d.pt")
    args = ["train", "--model", "dit", "--data", str(tmp_path / "d.pt"), "--input-size", "8", "--patch-size", "4",
            "--hidden-size", "32", "--depth", "2", "--num-heads", "2", "--steps", "2", "--batch-size", "4",
            "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1", "--export", str(tmp_path / "h.safetensors")]
    assert main(args) == 0
    assert "done: step 2" in capsys.readouterr().out
    model = sk.load_checkpoint(tmp_path / "h.safetensors")
    assert isinstance(model, sk.DiT) and model.num_classes == 3 and model.config["class_dropout_prob"] == 0.1
    assert os.path.exists(tmp_path / "run" / STATE_FILE)


def test_train_on_an_image_folder(tmp_path):
    from PIL import Image

    from skipdit_kernels.data import load_image_folder

    rng = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog", "eel"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = (torch.rand(12, 10, generator=rng) * 255).byte().numpy()
            Image.fromarray(arr, mode="L").save(tmp_path / cls / f"{i}.png")
    x, y, classes = load_image_folder(tmp_path, 8, channels=1)
    assert x.shape == (6, 1, 8, 8) and classes == ["cat", "dog", "eel"] and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert x.min() >= -1 and x.max() <= 1
    r = train(build_model("dit", **CFG), str(tmp_path), steps=2, batch_size=4, progress=False, threads=1)
    assert r.step == 2 and len(r.losses) == 2
