import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from labelmix.cli import main
from labelmix.errors import UserError
from labelmix.trainables import fit as fit_module
from labelmix.trainables.config import load_config
from labelmix.trainables.fit import NonFiniteLossError, fit
from labelmix.trainables.metrics import BACKGROUND_OFFSETS


def tiny(tmp_path, **overrides):
    values = {
        "dataset": {"synthetic": {"volumes": 5, "slices": 4, "height": 64, "width": 64, "seed": 1}},
        "mix": {"full": 0.25, "box": 0.25, "global": 0.25, "none": 0.25},
        "encoder": "test_resnet",
        "epochs": 2,
        "batch_size": 4,
        "steps_per_epoch": 2,
        "threads": 1,
        "pseudo_rampup": 0.0,
        "box_supervision": "priors",  # the box terms these tests look at; learned shapes: their own tests
        "cache_dir": str(tmp_path / "cache"),
    }
    values.update(overrides)
    return load_config(values)


def test_fit_reports_every_epoch_with_design_names(tmp_path):
    seen = []
    final = fit(tiny(tmp_path), lambda metrics, ckpt: seen.append((dict(metrics), ckpt)))
    assert [m["epoch"] for m, _ in seen] == [1.0, 2.0]
    first = seen[0][0]
    for key in ("train/loss", "val/miou", "val/miou_bg", "val/iou/IRF", "val/dice/SRF", "val/student/miou",
                "val/teacher/miou", "cost/hours", "cost/reduction", "labels/full", "labels/box"):
        assert key in first, key
    assert first["train/box_shapes"] == 0.0  # box_supervision priors: no learned shapes
    assert "test/miou" in final and "test/miou" not in first  # the test split is scored once, at the end
    # calibrated scores: the offset is chosen on val and test is scored with val's offset
    assert final["val/miou_calibrated"] >= final["val/miou"]
    assert final["val/background_offset"] in BACKGROUND_OFFSETS
    assert final["test/background_offset"] == final["val/background_offset"]
    assert 0.0 <= final["test/miou_calibrated"] <= 1.0
    # the foreground classes' IoU at the chosen offset average to the calibrated mIoU
    per_class = [final[f"val/iou_calibrated/{name}"] for name in ("IRF", "SRF", "PED")]
    assert np.nanmean(per_class) == pytest.approx(final["val/miou_calibrated"])
    # every annotation type is present, so every term was active
    assert {"train/full", "train/negative", "train/tightness", "train/box_size", "train/presence",
            "train/weak_ds", "train/pseudo"} <= set(first)
    assert math.isfinite(first["train/loss"])
    assert all(ckpt for _, ckpt in seen)


def test_resumed_run_ends_with_the_same_metrics(tmp_path):
    config = tiny(tmp_path, epochs=3)
    uninterrupted = fit(config, lambda m, c: None)

    saved = tmp_path / "after-epoch-1"

    class Stop(Exception):
        pass

    def stop_after_first(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, saved)
        raise Stop

    with pytest.raises(Stop):
        fit(config, stop_after_first)
    resumed = fit(config, lambda m, c: None, resume_from=str(saved))
    keys = [k for k in uninterrupted if not k.startswith("time/")]
    assert keys == [k for k in resumed if not k.startswith("time/")]
    for key in keys:
        a, b = uninterrupted[key], resumed[key]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6, (key, a, b)


def test_resume_with_another_config_is_refused(tmp_path):
    saved = {}
    fit(tiny(tmp_path, epochs=1), lambda m, c: saved.setdefault("dir", shutil.copytree(c, tmp_path / "ck")))
    with pytest.raises(UserError, match="different config"):
        fit(tiny(tmp_path, epochs=1, lr=0.5), lambda m, c: None, resume_from=str(saved["dir"]))


def test_non_finite_loss_stops_at_once(tmp_path, monkeypatch):
    from labelmix.trainables import losses

    monkeypatch.setattr(losses, "cross_entropy", lambda logits, mask, weight=None: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        fit(tiny(tmp_path, mix={"full": 1.0}), lambda m, c: None)


@pytest.mark.parametrize(
    "override, field",
    [
        ({"encoder": "resnet_does_not_exist"}, "encoder"),
        ({"ds_depth": 9}, "ds_depth"),
        ({"box_weight": -1.0}, "box_weight"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_decay": 0.0}, "ema_decay"),
        ({"box_fill": "tight"}, "box_fill"),
        ({"box_fill": [0.9, 0.5]}, "box_fill"),
        ({"mix_selection": "balanced"}, "mix_selection"),
    ],
)
def test_bad_config_names_the_field(tmp_path, override, field):
    with pytest.raises(UserError, match=rf"^{field}: "):
        fit(tiny(tmp_path, **override), lambda m, c: None)


def test_train_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"ema_decay": 1.5}))
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err == f"labelmix: error: {path}: ema_decay: must be in the open interval (0, 1) (got 1.5)\n"


def test_train_cli_runs_and_writes_final_metrics(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    cfg = tiny(tmp_path, epochs=1).model_dump(mode="json", by_alias=True)
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--set", "seed=3", "--set", "mix.seed=2"]) == 0, \
        capsys.readouterr().err
    assert (out / "final_metrics.json").is_file() and (out / "checkpoint" / "state.pt").is_file()
    written = json.loads((out / "config.json").read_text())
    assert written["seed"] == 3 and written["mix"]["seed"] == 2 and written["mix"]["full"] == 0.25


def test_train_overrides():
    from labelmix.cli import apply_overrides

    base = {"mix": {"full": 1.0}, "epochs": 8}
    out = apply_overrides(base, ["seed=1", "mix.full=0.05", "mix.none=0.95", "ds_level_weights=[1, 0.5]", "augment=false"])
    assert out == {"mix": {"full": 0.05, "none": 0.95}, "epochs": 8, "seed": 1, "ds_level_weights": [1, 0.5],
                   "augment": False}
    assert base == {"mix": {"full": 1.0}, "epochs": 8}  # the loaded YAML is not changed
    assert apply_overrides({}, ["dataset.synthetic.seed=4"]) == {"dataset": {"synthetic": {"seed": 4}}}
    for bad, message in [("seed", "expected FIELD=VALUE"), ("=1", "expected FIELD=VALUE"), ("mix..full=1", "expected FIELD=VALUE"),
                         ("epochs.x=1", "'epochs' is not a mapping"), ("seed=[1", "not valid YAML")]:
        with pytest.raises(UserError, match=message):
            apply_overrides(base, [bad])


def test_train_cli_bad_override_names_the_field(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"epochs": 1}))
    assert main(["train", str(path), "--set", "ema_decay=2"]) == 2
    assert capsys.readouterr().err == f"labelmix: error: {path}: ema_decay: must be in the open interval (0, 1) (got 2)\n"


def test_image_stats():
    images = torch.tensor([0.0, 0.0, 1.0, 1.0]).reshape(1, 1, 2, 2)
    mean, std = fit_module.image_stats(images)
    assert mean == pytest.approx(0.5) and std == pytest.approx(math.sqrt(1 / 3))  # unbiased std of 0,0,1,1
    assert fit_module.image_stats(torch.full((1, 1, 2, 2), 0.3)) == pytest.approx((0.3, 1.0))  # flat: std 1


def test_shipped_run_configs_are_valid():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "configs"
    paths = sorted(folder.glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        config = load_config(yaml.safe_load(path.read_text()), source=str(path))
        assert config.encoder == "unet" and config.threads == 1 and config.batch_size == 8, path


def _terms(config):
    import numpy as np

    from labelmix.trainables.batches import make_batch

    run = fit_module.build_run(config)
    index = np.arange(len(run.train))  # every image: all four annotation types
    batch = make_batch(run.train, run.types, index, None)
    run.student.eval()  # BatchNorm with running stats: the two runs see identical activations
    with torch.no_grad():
        return {k: v.item() for k, v in fit_module.loss_terms(run, batch, pseudo_weight=1.0).items()}


def test_ds_weight_scales_deep_supervision_but_not_weak_label_terms(tmp_path):
    first = {"global_weight": 0.02, "box_weight": 0.02}  # the first formulation too, kept as an option
    low = _terms(tiny(tmp_path, ds_weight=0.2, pseudo_ds=False, **first))
    high = _terms(tiny(tmp_path, ds_weight=1.0, pseudo_ds=False, **first))
    assert set(low) == {"full", "negative", "tightness", "box_size", "pairwise", "presence", "weak_ds", "global", "box", "pseudo"}
    for name in ("negative", "tightness", "box_size", "pairwise", "presence", "global", "box"):
        assert low[name] == pytest.approx(high[name], rel=1e-6), name
    assert low["pseudo"] == pytest.approx(high["pseudo"], rel=1e-6)  # CE only: pseudo_ds off
    # the weak labels' exact multi-label targets supervise the DS heads: they scale like mask DS
    assert high["weak_ds"] == pytest.approx(5 * low["weak_ds"], rel=1e-5)
    no_ds = _terms(tiny(tmp_path, ds_weight=0.0, pseudo_ds=False))
    # full = CE + ds_weight * DS, so the DS part grows exactly 5x from 0.2 to 1.0
    assert high["full"] - no_ds["full"] == pytest.approx(5 * (low["full"] - no_ds["full"]), rel=1e-5)
    assert "weak_ds" not in no_ds or no_ds["weak_ds"] == 0.0


def test_by_default_a_mix_of_masks_and_boxes_learns_from_learned_shapes(tmp_path):
    seen = []
    fit(tiny(tmp_path, box_supervision="auto", box_shape_steps=2, epochs=1, mix={"full": 0.5, "box": 0.5}),
        lambda m, c: seen.append(dict(m)))
    terms = {name.removeprefix("train/") for name in seen[0] if name.startswith("train/")}
    assert seen[0]["train/box_shapes"] == 1.0
    assert {"full", "box_shape"} <= terms and not {"tightness", "box_size", "pairwise", "negative", "pseudo"} & terms


def test_box_supervision_shapes_keeps_the_global_and_unlabeled_images_terms(tmp_path):
    seen = []
    fit(tiny(tmp_path, box_supervision="shapes", box_shape_steps=2, epochs=1), lambda m, c: seen.append(dict(m)))
    terms = {name.removeprefix("train/") for name in seen[0] if name.startswith("train/")}
    assert seen[0]["train/box_shapes"] == 1.0
    assert {"full", "box_shape", "negative", "presence", "weak_ds", "pseudo"} <= terms  # global and unlabeled images: theirs
    assert not {"tightness", "box_size", "pairwise"} & terms  # no box prior


def test_weak_label_terms_switch_off_by_their_weights(tmp_path):
    off = _terms(tiny(tmp_path, negative_weight=0, tightness_weight=0, box_size_weight=0, pairwise_weight=0, presence_weight=0,
                      weak_ds_weight=0))
    assert set(off) == {"full", "pseudo"}


def test_bf16_channels_last_trains_with_finite_losses(tmp_path):
    seen = []
    final = fit(tiny(tmp_path, precision="bf16", channels_last=True), lambda m, c: seen.append(dict(m)))
    assert len(seen) == 2
    assert all(math.isfinite(m["train/loss"]) for m in seen)
    assert {"train/negative", "train/tightness", "train/pseudo"} <= set(seen[0])
    assert math.isfinite(final["val/miou"])


def test_fp16_on_cpu_is_refused_with_the_field_named(tmp_path):
    with pytest.raises(UserError, match="precision: fp16 needs a CUDA device"):
        fit(tiny(tmp_path, precision="fp16", device="cpu"), lambda m, c: None)


def test_default_bf16_falls_back_to_fp32_on_a_gpu_without_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    assert fit_module.resolve_precision(tiny(tmp_path), cuda) == "fp32"  # the default: falls back
    with pytest.raises(UserError, match="precision: this GPU has no bf16"):
        fit_module.resolve_precision(tiny(tmp_path, precision="bf16"), cuda)  # asked for: refused
    monkeypatch.setattr(fit_module, "cpu_has_bf16", lambda: True)
    assert fit_module.resolve_precision(tiny(tmp_path), torch.device("cpu")) == "bf16"


def test_default_bf16_falls_back_to_fp32_on_a_cpu_without_bf16_instructions(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert fit_module.resolve_precision(tiny(tmp_path), cpu) == "fp32"  # the default: falls back
    assert fit_module.resolve_precision(tiny(tmp_path, precision="bf16"), cpu) == "bf16"  # asked for: kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert fit_module.resolve_precision(tiny(tmp_path), cpu) == "bf16"


def test_box_fill_auto_reads_each_class_band_off_the_masked_training_images(tmp_path):
    import numpy as np

    from labelmix.trainables.criterion import box_bands
    from labelmix.trainables.data.annotations import FULL, box_fills

    run = fit_module.build_run(tiny(tmp_path, box_fill="auto", mix={"full": 0.5, "box": 0.5}))
    masked = np.flatnonzero(run.types.numpy() == FULL)
    store = fit_module.plan_annotations(run.config, fit_module.load_store(fit_module.resolve_store(run.config)))[0]
    fills = box_fills([store.masks[i] for i in masked], [store.boxes[i] for i in masked])
    assert run.criterion.box_fill == box_bands("auto", fills, 4)
    assert sum(len(v) >= 3 for v in fills.values()) >= 1  # at least one class has its own band here
    assert any(band != (0.5, 0.9) for band in run.criterion.box_fill[1:])
    assert fit_module.build_run(tiny(tmp_path)).criterion.box_fill == ((0.5, 0.9),) * 4


def test_the_weak_ds_targets_of_box_and_global_images_have_their_own_weights(tmp_path):
    both = _terms(tiny(tmp_path, box_ds_weight=1.0, weak_ds_weight=1.0))["weak_ds"]
    boxes = _terms(tiny(tmp_path, box_ds_weight=1.0, weak_ds_weight=0.0))["weak_ds"]
    glob = _terms(tiny(tmp_path, box_ds_weight=0.0, weak_ds_weight=1.0))["weak_ds"]
    assert both == pytest.approx(boxes + glob, rel=1e-6) and boxes > 0 and glob > 0
    assert _terms(tiny(tmp_path, box_ds_weight=2.0, weak_ds_weight=0.0))["weak_ds"] == pytest.approx(2 * boxes, rel=1e-6)
    assert "weak_ds" not in _terms(tiny(tmp_path, mix={"full": 0.5, "box": 0.5}))  # the default: boxes without them


@pytest.mark.parametrize("rule, expected", [("fixed", 1), ("share", 2)])
def test_the_batch_rule_sets_the_masked_images_per_batch(tmp_path, monkeypatch, rule, expected):
    plans = []

    def recording(types, *args, **kwargs):
        plan = fit_module.batch_indices.__wrapped__(types, *args, **kwargs)
        plans.append((types, plan))
        return plan

    recording.__wrapped__ = fit_module.batch_indices
    monkeypatch.setattr(fit_module, "batch_indices", recording)
    # half the images masked, batches of 4: the fixed rule keeps full_per_batch 1, the share rule takes 2
    config = tiny(tmp_path, mix={"full": 0.5, "box": 0.5}, full_per_batch=1, full_per_batch_rule=rule, epochs=1)
    fit(config, lambda metrics, ckpt: None)
    (types, plan), = plans
    assert ((types[plan] == 0).sum(axis=1) == expected).all()


def test_class_balanced_selection_masks_other_images_and_charges_the_asked_labels(tmp_path):
    from labelmix.trainables.data.annotations import FULL, NONE, class_balanced_order

    mix = {"full": 0.25, "none": 0.75, "seed": 2}
    store = fit_module.load_store(fit_module.resolve_store(tiny(tmp_path, mix=mix)))
    train, random_types, random_cost = fit_module.plan_annotations(tiny(tmp_path, mix=mix), store)
    _, types, cost = fit_module.plan_annotations(tiny(tmp_path, mix=mix, mix_selection="classes"), store)
    masked = np.flatnonzero(types == FULL)
    assert sorted(masked) == sorted(class_balanced_order(train.global_labels, seed=2)[:len(masked)])
    assert len(masked) == (random_types == FULL).sum()
    # 3 foreground classes x 1 s on each masked and each unlabeled image, on top of the same mix at random
    asked_hours = 3 * ((types == FULL).sum() + (types == NONE).sum()) / 3600
    assert cost.hours == pytest.approx(random_cost.hours + asked_hours)
