"""The seed-recipe configs (configs/<recipe>.py): every config file loads with no argument and
with its tiny one and rejects an unknown one; each recipe's tiny form keeps the recipe's
structure and trains a few steps through `tasks.train_and_evaluate` on 8 devices; the two-stage
pair runs pretrain then fine-tune from it; the k-fold recipe runs its 2 tiny folds."""

import importlib
import json
import math
import os

import jax
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                      if f.endswith(".py") and not f.startswith("_"))
# Recipe -> its tiny arguments. resnet50_two_stage's "tiny" is its "pretrain_tiny".
RECIPES = {
    "vit_b16_140k": ("tiny",),
    "vit_ciplab": ("tiny",),
    "resnet50_two_stage": ("tiny", "pretrain_tiny", "finetune_tiny"),
    "xception_kfold": ("tiny",),
    "densenet121_140k": ("tiny",),
    "vgg16_140k": ("tiny",),
    "small_cnn": ("tiny",),
}
FULL_ARGS = {"resnet50_two_stage": {"pretrain_tiny": "pretrain", "finetune_tiny": "finetune",
                                    "tiny": "pretrain"}}


def _module(name):
    return importlib.import_module(f"configs.{name}")


def _load_from_command_line(spec):
    """What `--config=configs/<spec>` gives deepfake_jax.main (ml_collections' file loader)."""
    argv = ["prog", f"--config={os.path.join(ROOT, 'configs', spec)}"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


def _on(block, key="patience"):
    return bool(block and block.get(key))


def _structure(config):
    """What the tiny form must keep: everything that makes the recipe, no sizes."""
    opt = config.optimizer
    return dict(
        model=config.model_name, optimizer=opt.name, schedule=opt.schedule,
        momentum=opt.get("momentum"), weight_decay=opt.weight_decay,
        clip=opt.get("grad_clip_norm"),
        two_phase=_on(opt.get("two_phase"), "phase1_epochs") or _on(opt.get("two_phase"),
                                                                     "phase1_steps"),
        plateau=_on(opt.get("reduce_on_plateau")), early_stopping=_on(config.get("early_stopping")),
        preset=config.augment.preset, strong_after=config.augment.strong_after_epochs is not None,
        mixup=config.mixup_alpha, smoothing=config.label_smoothing, ema=config.ema_decay,
        use_ema=config.eval.use_ema, init_format=config.init_from.format,
        mean=tuple(config.input.mean), std=tuple(config.input.std),
        kfold=config.kfold > 1, mix=bool(config.data.get("mix")),
    )


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_file_loads_plain_and_tiny_and_rejects_bogus(name):
    full = _load_from_command_line(f"{name}.py")
    tiny = _load_from_command_line(f"{name}.py:tiny")
    assert full.model_name == tiny.model_name
    with pytest.raises(flags.IllegalFlagValueError, match="unknown argument 'bogus'"):
        _load_from_command_line(f"{name}.py:bogus")


def test_every_recipe_is_listed_and_documented():
    missing = set(RECIPES) - set(CONFIG_FILES)
    assert not missing, f"recipe configs missing: {missing}"
    for name in RECIPES:
        doc = _module(name).__doc__
        for needed in ("data_prep.convert", "deepfake_jax.main", "tiny", "estimate"):
            assert needed in doc, f"configs/{name}.py: its docstring never says {needed!r}"


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in RECIPES.items() for a in args])
def test_tiny_form_keeps_the_recipe_and_shrinks_sizes(name, arg):

    from deepfake_jax.training import train_state
    full = _module(name).get_config(FULL_ARGS.get(name, {}).get(arg))
    tiny = _module(name).get_config(arg)
    expected = _structure(full)
    if arg == "finetune_tiny":  # converted folders cannot be named in a config: tests pass them
        expected["mix"] = False
    assert _structure(tiny) == expected
    assert tiny.data.dir is None and tiny.data.synthetic.image_size == 32
    assert tiny.model.variant == "tiny" and tiny.num_train_steps <= 4
    assert full.data.dir or full.data.get("mix"), "the full recipe names its data"
    assert full.num_train_steps is None and full.model.variant != "tiny"
    train_state.abstract_model(full)  # the full-size model builds with the recipe's kwargs


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    """The tiny forms' synthetic faces (every recipe shares the settings), generated once."""
    from deepfake_jax.data import datasets

    configs = [_module(n).get_config(a) for n, args in RECIPES.items() for a in args]
    synthetic = {json.dumps(c.data.synthetic.to_dict(), sort_keys=True) for c in configs}
    assert len(synthetic) == 1, "tiny forms disagree on the synthetic data; share it no more"
    return datasets.prepare(configs[0], str(tmp_path_factory.mktemp("recipe_data")))


@pytest.fixture
def no_plots(monkeypatch):
    """ROC/PR/histogram PNGs are tested elsewhere; here they would only cost seconds."""
    from deepfake_jax.evaluation import metrics

    monkeypatch.setattr(metrics, "save_plots", lambda *args, **kwargs: None)


def _rows(workdir, kind):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if row["kind"] == kind]


def _check_run(workdir, config, summary):
    assert 1 <= summary["step"] <= config.num_train_steps
    train_rows = _rows(workdir, "train")
    assert train_rows and all(math.isfinite(r["loss"]) for r in train_rows)
    assert _rows(workdir, "val") and _rows(workdir, "final_test")
    with open(os.path.join(workdir, "eval", "test", "metrics.json")) as f:
        test = json.load(f)
    assert 0.0 <= test["roc_auc"] <= 1.0 and test["num_examples"] == 16


@pytest.mark.parametrize("name", ["vit_b16_140k", "vit_ciplab", "densenet121_140k",
                                  "vgg16_140k"])
def test_tiny_recipe_trains(name, recipe_data, tmp_path, no_plots):

    from deepfake_jax import tasks
    assert jax.device_count() == 8
    config = _module(name).get_config("tiny")
    config.data.dir = recipe_data
    summary = tasks.train_and_evaluate(config, str(tmp_path))
    _check_run(str(tmp_path), config, summary)


def test_tiny_recipe_generates_its_own_data(tmp_path, no_plots):
    """No data.dir: the tiny form renders and converts its synthetic faces in the workdir."""

    from deepfake_jax import tasks
    config = _module("small_cnn").get_config("tiny")
    summary = tasks.train_and_evaluate(config, str(tmp_path))
    assert os.path.exists(tmp_path / "data" / "arrayrecord" / "manifest.json")
    _check_run(str(tmp_path), config, summary)


@pytest.fixture(scope="module")
def ciplab_data(tmp_path_factory):
    """A second domain for the fine-tune: CIPLab-style region-edited fakes, 32 px, converted."""
    from data_prep import convert, synthetic

    root = tmp_path_factory.mktemp("ciplab_data")
    synthetic.generate_ciplab(str(root / "images"), num_real=20, num_fake=20, image_size=32,
                              seed=1)
    convert.convert(str(root / "images"), str(root / "arrayrecord"), layout="ciplab",
                    split_ratios=(0.6, 0.2, 0.2), split_seed=0, show_progress=False)
    return str(root / "arrayrecord")


def test_two_stage_pretrain_then_finetune_on_a_domain_mix(recipe_data, ciplab_data, tmp_path,
                                                          no_plots):

    from deepfake_jax import tasks
    pretrain = _module("resnet50_two_stage").get_config("pretrain_tiny")
    pretrain.data.dir = recipe_data
    pre_dir = str(tmp_path / "pretrain")
    _check_run(pre_dir, pretrain, tasks.train_and_evaluate(pretrain, pre_dir))

    finetune = _module("resnet50_two_stage").get_config("finetune_tiny")
    assert (finetune.init_from.format, finetune.init_from.use_ema) == ("deepfake_jax", True)
    assert finetune.mixup_alpha > 0 and finetune.augment.preset == "strong"
    finetune.init_from.path = pre_dir
    # the full recipe's two domains, as the tiny form's docstring says to pass them
    finetune.data.mix = (("140k", recipe_data, 0.5), ("ciplab", ciplab_data, 0.5))
    fine_dir = str(tmp_path / "finetune")
    summary = tasks.train_and_evaluate(finetune, fine_dir)
    assert 1 <= summary["step"] <= finetune.num_train_steps
    with open(os.path.join(fine_dir, "eval", "test", "metrics.json")) as f:
        test = json.load(f)
    domains = {r["value"] for r in test["subsets"] if r["subset"] == "domain"}
    assert domains == {"140k", "ciplab"}  # the union of both test splits, with per-domain rows


def test_xception_kfold_tiny_runs_two_folds(recipe_data, tmp_path, no_plots):
    from deepfake_jax.experiments import kfold

    assert _module("xception_kfold").get_config().kfold == 5
    config = _module("xception_kfold").get_config("tiny")
    assert config.kfold == 2
    config.data.dir = recipe_data
    results = kfold.run_kfold(config, str(tmp_path))
    assert len(results["per_fold"]) == 2
    assert results["pooled"]["num_examples"] == 64  # train + valid pooled, each held out once
    for i in range(2):
        assert _rows(str(tmp_path / f"fold_{i}"), "val")
