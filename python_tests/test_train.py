import json
import os

import pytest
import torch
from safetensors.torch import load_file

import skipdit_kernels as sk
from skipdit_kernels.cli import main
from skipdit_kernels.training.loop import STATE_FILE, build_model, train

CFG = dict(
    input_size=8,
    patch_size=4,
    in_channels=1,
    hidden_size=32,
    depth=2,
    num_heads=2,
    num_classes=3,
    learn_sigma=True,
    class_dropout_prob=0.2,
)


def data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("kind", ["skipdit", "dit"])
def test_resume_gives_the_same_losses(tmp_path, kind):
    torch.manual_seed(1)
    straight = train(
        build_model(kind, **CFG),
        data(),
        steps=6,
        batch_size=8,
        lr=1e-3,
        seed=3,
        out_dir=tmp_path / "a",
        progress=False,
        threads=1,
        log_every=2,
    )
    assert len(straight.losses) == 6
    torch.manual_seed(1)
    first = train(
        build_model(kind, **CFG),
        data(),
        steps=3,
        batch_size=8,
        lr=1e-3,
        seed=3,
        out_dir=tmp_path / "b",
        progress=False,
        threads=1,
        log_every=2,
    )
    # a differently initialised model: everything must come from the saved state
    torch.manual_seed(99)
    resumed = train(
        build_model(kind, **CFG),
        data(),
        steps=6,
        batch_size=8,
        lr=1e-3,
        seed=3,
        out_dir=tmp_path / "b",
        progress=False,
        threads=1,
        log_every=2,
    )
    assert first.losses + resumed.losses == straight.losses
    assert resumed.step == 6
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]


def test_checkpoint_files_load_safely(tmp_path):
    result = train(
        build_model("skipdit", **CFG),
        data(),
        steps=2,
        batch_size=4,
        seed=0,
        out_dir=tmp_path,
        progress=False,
        threads=1,
    )
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["step"] == 2 and set(state) >= {
        "model",
        "ema",
        "optimizer",
        "train",
        "config",
    }  # draws come from (seed, step)
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
        train(
            build_model("dit", **CFG),
            (torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)),
            steps=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="classes"):
        train(build_model("dit", **CFG), (torch.zeros(4, 1, 8, 8), torch.full((4,), 7)), steps=1, progress=False)


def test_cli_train_on_a_tensor_file(tmp_path, capsys):
    x, y = data()
    torch.save({"images": x, "labels": y}, tmp_path / "d.pt")
    args = [
        "train",
        "--model",
        "dit",
        "--data",
        str(tmp_path / "d.pt"),
        "--input-size",
        "8",
        "--patch-size",
        "4",
        "--hidden-size",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--threads",
        "1",
        "--export",
        str(tmp_path / "h.safetensors"),
    ]
    assert main(args) == 0
    assert "done: step 2" in capsys.readouterr().out
    model = sk.load_checkpoint(tmp_path / "h.safetensors")
    assert isinstance(model, sk.DiT) and model.num_classes == 3 and model.config["class_dropout_prob"] == 0.1
    assert os.path.exists(tmp_path / "run" / STATE_FILE)


def test_train_on_an_image_folder(tmp_path):
    from PIL import Image

    from skipdit_kernels.training.data import load_image_folder

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


# -- two-stage fine-tuning of a converted model --------------------------------------------------------


def converted(seed=0):
    from skipdit_kernels.training.convert import convert_dit

    torch.manual_seed(seed)
    dit = train(
        build_model("dit", **CFG), data(), steps=3, batch_size=8, lr=3e-3, seed=seed, progress=False, threads=1
    ).model  # non-trivial weights (adaLN no longer zero)
    return convert_dit(dit, "identity")[0]


def test_stage_skip_trains_only_the_skip_branches(tmp_path):
    from skipdit_kernels.training.convert import is_skip_parameter

    model = converted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = train(
        model, data(), steps=5, batch_size=8, lr=1e-2, seed=1, stage="skip", out_dir=tmp_path, progress=False, threads=1
    )
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(is_skip_parameter(k) for k in changed)
    for k, v in r.ema.state_dict().items():
        if not is_skip_parameter(k):
            assert torch.equal(v, before[k]), k  # the EMA of a frozen weight is the weight, bit for bit
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    trainable = [n for n, _ in model.named_parameters() if is_skip_parameter(n)]
    assert len(state["optimizer"]["state"]) == len(trainable)  # no optimizer state for frozen parameters
    assert all(p.grad is None for n, p in model.named_parameters() if not is_skip_parameter(n))
    with pytest.raises(ValueError, match="no skip branches"):
        train(build_model("dit", **CFG), data(), steps=1, batch_size=4, stage="skip", progress=False, threads=1)


def test_two_stages_resume_exactly_and_refuse_a_stage_mismatch(tmp_path):
    train(
        converted(),
        data(),
        steps=3,
        batch_size=8,
        lr=1e-2,
        seed=1,
        stage="skip",
        out_dir=tmp_path / "s1",
        progress=False,
        threads=1,
    )
    kw = dict(batch_size=8, lr=1e-3, seed=2, stage="all", init_from_path=tmp_path / "s1", progress=False, threads=1)
    straight = train(build_model("skipdit", **CFG), data(), steps=6, out_dir=tmp_path / "a", **kw)
    first = train(build_model("skipdit", **CFG), data(), steps=3, out_dir=tmp_path / "b", **kw)
    resumed = train(build_model("skipdit", **CFG), data(), steps=6, out_dir=tmp_path / "b", **kw)
    assert resumed.resumed_from == 3
    assert first.losses + resumed.losses == straight.losses
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stage 'all' run"):
        train(build_model("skipdit", **CFG), data(), steps=7, out_dir=tmp_path / "b", **{**kw, "stage": "skip"})


def test_stage_all_starts_from_the_skip_stage(tmp_path):
    r1 = train(
        converted(),
        data(),
        steps=2,
        batch_size=8,
        lr=1e-2,
        seed=1,
        stage="skip",
        out_dir=tmp_path / "s1",
        progress=False,
        threads=1,
    )
    model = build_model("skipdit", **CFG)
    r2 = train(
        model, data(), steps=0, batch_size=8, stage="all", init_from_path=tmp_path / "s1", progress=False, threads=1
    )
    for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(r1.ema.state_dict().values(), r2.ema.state_dict().values()):
        assert torch.equal(a, b)
    # from a model file (convert's output): the EMA starts from the weights
    sk.save_checkpoint(r1.ema, tmp_path / "m.safetensors")
    r3 = train(
        build_model("skipdit", **CFG),
        data(),
        steps=0,
        batch_size=8,
        init_from_path=tmp_path / "m.safetensors",
        progress=False,
        threads=1,
    )
    for a, b in zip(r1.ema.state_dict().values(), r3.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_same_recipe_trains_a_latte_skip_on_videos():
    from skipdit_kernels.models import LatteSkip
    from skipdit_kernels.training.convert import convert_latte, is_skip_parameter

    cfg = dict(
        input_size=8,
        patch_size=4,
        in_channels=1,
        hidden_size=32,
        depth=4,
        num_heads=2,
        num_frames=3,
        num_classes=3,
        extras=2,
    )
    g = torch.Generator().manual_seed(0)
    plain = {
        k: torch.randn(v.shape, generator=g) * 0.1 if k not in ("pos_embed", "temp_embed") else v  # not zero-init
        for k, v in LatteSkip(**cfg).state_dict().items()
        if not is_skip_parameter(k)
    }
    model, _ = convert_latte(plain, "official", num_heads=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    videos = torch.rand(12, 3, 1, 8, 8) * 2 - 1
    r = train(
        model, (videos, torch.arange(12) % 3), steps=3, batch_size=4, lr=1e-2, stage="skip", progress=False, threads=1
    )
    assert len(r.losses) == 3 and all(loss == loss for loss in r.losses)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(is_skip_parameter(k) for k in changed)


def test_data_order_visits_every_sample_once_per_epoch():
    from skipdit_kernels.training.loop import RankShard, global_batch_indices

    stream = torch.cat([global_batch_indices(10, s, 4, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    rows = [list(range(8))[s] for rank in range(2) for s in RankShard(8, 2, rank, accumulation=2).micro_batches()]
    assert sum(rows, []) == list(range(8))  # the ranks' micro-batches tile the global batch, none twice
    with pytest.raises(ValueError, match="divisible"):
        RankShard(6, 4)


def test_activation_checkpointing_and_accumulation_keep_the_losses():
    torch.manual_seed(0)
    plain = train(build_model("skipdit", **CFG), data(), steps=2, batch_size=8, seed=0, progress=False, threads=1)
    torch.manual_seed(0)
    ckpt = train(
        build_model("skipdit", **CFG),
        data(),
        steps=2,
        batch_size=8,
        seed=0,
        progress=False,
        threads=1,
        activation_checkpointing=True,
        accumulation=2,
    )
    torch.testing.assert_close(torch.tensor(ckpt.losses), torch.tensor(plain.losses), rtol=1e-5, atol=0)


def test_cli_fine_tunes_in_two_stages_with_resume_line_one_loss_and_readable_files(tmp_path, capsys):
    model = converted()
    sk.save_checkpoint(model, tmp_path / "conv.safetensors")
    x, y = data()
    torch.save({"images": x, "labels": y}, tmp_path / "d.pt")
    common = [
        "train",
        "--data",
        str(tmp_path / "d.pt"),
        "--batch-size",
        "4",
        "--no-progress",
        "--threads",
        "1",
        "--log-every",
        "2",
    ]
    assert (
        main(
            common
            + [
                "--init-from",
                str(tmp_path / "conv.safetensors"),
                "--stage",
                "skip",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "s1"),
            ]
        )
        == 0
    )
    assert main(common + ["--init-from", str(tmp_path / "s1"), "--steps", "3", "--out", str(tmp_path / "s2")]) == 0
    capsys.readouterr()
    assert main(common + ["--init-from", str(tmp_path / "s1"), "--steps", "5", "--out", str(tmp_path / "s2")]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 's2' / STATE_FILE} at step 3" in out
    rows = [json.loads(line) for line in open(tmp_path / "s2" / "log.jsonl")]
    assert f"loss {rows[-1]['loss']:.4f} (mean of the last {rows[-1]['steps_averaged']} steps" in out
    assert all(r["world_size"] == 1 for r in rows)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", STATE_FILE, "log.jsonl"):
        assert os.stat(tmp_path / "s2" / name).st_mode & 0o777 == 0o666 & ~umask, name
    assert isinstance(sk.load_checkpoint(tmp_path / "s2" / "model.safetensors"), sk.SkipDiT)
