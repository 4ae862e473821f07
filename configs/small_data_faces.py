"""Small real face data (a few hundred to a few thousand images), trained from scratch on CPU.

    python -m deepfake_jax.main --config configs/small_data_faces.py \
        --config.data.dir=/data/my_faces_ar --workdir runs/faces            # the recipe
    ... --config.kfold=5                                                     # 5-fold CV
    configs/small_data_faces.py:npr_resnet        # ResNet-18/4 on NPR residual crops
    configs/small_data_faces.py:seed_cnn          # the seeds' small CNN, same crops
    configs/small_data_faces.py:resnet18_scratch  # torchvision ResNet-18, full width, scratch
    configs/small_data_faces.py:tiny              # the recipe at test size (seconds)

The recipe (README "Small real data" has the measurements): fixed residual co-occurrence
(SPAM) features of the whole image -- how neighbouring pixels and colour channels relate,
where generators leave their traces -- and a linear head, the only trained part
(`models/cooccurrence.py`). A few hundred images are enough to fit 1,716 weights; a network
learning its own filters from them learns the faces instead (the comparisons below it).

`:npr_resnet`, the previous recipe: a ResNet-18 at 1/4 width with the small stem (no
downsampling before the first block) on the neighbouring-pixel residual (NPR: the image minus
its 2x nearest down-up-sampled copy), fed random 96-px CROPS at native resolution, never
resized. `:seed_cnn` and `:resnet18_scratch` use its crops and schedule.
"""

import ml_collections

from configs import default

ARGS = ("npr_resnet", "seed_cnn", "resnet18_scratch", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg is not None and arg not in ARGS:
        raise ValueError(f"configs/small_data_faces.py: unknown argument {arg!r}; use nothing "
                         f"(the recipe) or one of: {', '.join(ARGS)}")
    config = default.get_config()
    # No data.dir default: a user's `data_prep.convert` output (see README "Train on your own
    # folder"). Unset -> the default config's synthetic faces.
    config.input.update(batch_size=32, eval_batch_size=64)
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint.update(every_steps=100, async_save=False)
    if arg in (None, "tiny"):
        _cooccurrence_recipe(config, tiny=arg == "tiny")
    else:
        _npr_resnet_recipe(config, arg)
    return config


def _cooccurrence_recipe(config: ml_collections.ConfigDict, tiny: bool) -> None:
    config.model_name = "cooccurrence"
    config.model = ml_collections.ConfigDict(dict(variant="spam3", hidden=0, dtype="float32"))
    # Whole images (crop = image size: the random crop is the identity, nothing is resized),
    # in grey levels: the features quantise pixel differences to whole grey levels.
    config.input.update(crop_size=256, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    # AdamW's decay on the head ~ logistic regression's L2 penalty; 10 epochs converge (a
    # scikit-learn fit of the same features reached the same AUC, README).
    config.optimizer.update(learning_rate=1e-2, weight_decay=0.1, warmup_steps=10)
    config.num_epochs = 10
    config.ema_decay = 0.9  # ~150 steps on 500 images: a short EMA horizon
    if tiny:
        config.data.synthetic.update(train=32, valid=8, test=8, image_size=32, difficulty=0.0)
        config.input.update(crop_size=32, batch_size=16, eval_batch_size=16)
        config.model.variant = "tiny"
        config.optimizer.warmup_steps = 1
        config.num_train_steps = 2
        config.log_every_steps = 1
        config.eval_every_steps = 1000  # evaluated once, at the end
        config.checkpoint.every_steps = 1000


def _npr_resnet_recipe(config: ml_collections.ConfigDict, arg: str) -> None:
    config.input.crop_size = 96
    config.model.update(variant="18", width=16, stem="small", input_transform="npr")
    config.optimizer.update(learning_rate=2e-3, weight_decay=0.05, warmup_steps=30)
    config.num_epochs = 12
    config.ema_decay = 0.98  # few steps (~200 per run on 500 images): a short EMA horizon
    if arg == "seed_cnn":  # the seeds' Keras CNN (models/cnn.py) on the same crops
        config.model_name = "cnn"
        config.model = ml_collections.ConfigDict(dict(
            variant="seed", image_size=config.input.crop_size))
        config.optimizer.update(learning_rate=1e-3, weight_decay=0.0)
    elif arg == "resnet18_scratch":  # torchvision ResNet-18: ImageNet stem, full width
        config.model = ml_collections.ConfigDict(dict(
            variant="18", width=64, stem="imagenet", input_transform="none", dtype="float32"))
