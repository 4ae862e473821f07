"""Small real face data (a few hundred to a few thousand images), trained from scratch on CPU.

    python -m deepfake_jax.main --config configs/small_data_faces.py \
        --config.data.dir=/data/my_faces_ar --workdir runs/faces            # the recipe
    ... --config.kfold=5                                                     # 5-fold CV
    configs/small_data_faces.py:seed_cnn          # the seeds' small CNN, same data and crops
    configs/small_data_faces.py:resnet18_scratch  # torchvision ResNet-18, full width, scratch
    configs/small_data_faces.py:tiny              # test size (seconds)

The recipe (README "Small real data" has the measurements): a ResNet-18 at 1/4 width with the
small stem (no downsampling before the first block) on the neighbouring-pixel residual (NPR:
the image minus its 2x nearest down-up-sampled copy), fed random CROPS of the 256-px images
at their native resolution, never resized: GAN upsampling leaves 2-4 px periodic traces that a
resize would blur away and the NPR isolates. Evaluation uses the center crop of the same size.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    # No data.dir default: a user's `data_prep.convert` output (see README "Train on your own
    # folder"). Unset -> the default config's synthetic faces.
    config.input.update(crop_size=96, batch_size=32, eval_batch_size=64)
    config.model.update(variant="18", width=16, stem="small", input_transform="npr")
    config.optimizer.update(learning_rate=2e-3, weight_decay=0.05, warmup_steps=30)
    config.num_epochs = 12
    config.ema_decay = 0.98  # few steps (~200 per run on 500 images): a short EMA horizon
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint.update(every_steps=100, async_save=False)

    if arg == "seed_cnn":  # the seeds' Keras CNN (models/cnn.py) on the same crops
        config.model_name = "cnn"
        config.model = ml_collections.ConfigDict(dict(
            variant="seed", image_size=config.input.crop_size))
        config.optimizer.update(learning_rate=1e-3, weight_decay=0.0)
    elif arg == "resnet18_scratch":  # torchvision ResNet-18: ImageNet stem, full width
        config.model = ml_collections.ConfigDict(dict(
            variant="18", width=64, stem="imagenet", input_transform="none", dtype="float32"))
    elif arg in ("cooc", "cooc_tiny"):
        # Fixed residual co-occurrence (SPAM) features of the whole image + a linear head
        # (models/cooccurrence.py): nothing but the head is learnt, so a few hundred images do.
        config.model_name = "cooccurrence"
        config.model = ml_collections.ConfigDict(dict(variant="spam3", hidden=0,
                                                      dtype="float32"))
        # Whole images (crop = image size: a random crop is the identity, nothing resized),
        # in grey levels: the features quantise pixel differences to whole grey levels.
        config.input.update(crop_size=256, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
        config.optimizer.update(learning_rate=1e-2, weight_decay=0.1, warmup_steps=10)
        config.num_epochs = 10
        config.ema_decay = 0.9
        if arg == "cooc_tiny":
            config.data.synthetic.update(train=32, valid=8, test=8, image_size=32,
                                         difficulty=0.0)
            config.input.update(crop_size=32, batch_size=16, eval_batch_size=16)
            config.model.variant = "tiny"
            config.num_train_steps = 2
            config.eval_every_steps = config.checkpoint.every_steps = 1000
    elif arg == "tiny":  # same recipe, test size: seconds on one CPU core
        config.data.synthetic.update(train=32, valid=8, test=8, image_size=32, difficulty=0.0)
        config.input.update(crop_size=16, batch_size=16, eval_batch_size=16)
        config.model.variant = "tiny"
        config.optimizer.warmup_steps = 1
        config.num_train_steps = 2
        config.log_every_steps = 1
        config.eval_every_steps = 1000  # evaluated once, at the end
        config.checkpoint.every_steps = 1000
    elif arg:
        raise ValueError(f"configs/small_data_faces.py: unknown argument {arg!r}; use nothing, "
                         "'cooc', 'cooc_tiny', 'seed_cnn', "
                         "'resnet18_scratch' or 'tiny'")
    return config
