"""Default recipe: ResNet-18 on the built-in synthetic faces; trains and evaluates on a laptop CPU.

    python -m deepfake_jax.main --config configs/default.py --workdir runs/demo
    python -m deepfake_jax.main --config configs/default.py:tiny --workdir /tmp/t   # test size
    ... --config.data.dir=/data/140k_converted --config.input.batch_size=128        # overrides
"""

import ml_collections
from ml_collections import config_dict

from deepfake_jax.data import augment, tfds_source


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.kfold = 0  # K > 1: K-fold cross-validation runs (deepfake_jax/experiments/kfold.py)

    config.data = ml_collections.ConfigDict()
    # A folder written by `python -m data_prep.convert`; unset -> the synthetic data below,
    # generated into <workdir>/data on the first run.
    config.data.dir = config_dict.placeholder(str)
    # Domain-balanced training over several converted datasets (instead of data.dir):
    # ((name, converted_dir, weight), ...), e.g. (("140k", "/data/140k_ar", 0.7),
    # ("ciplab", "/data/ciplab_ar", 0.3)); train splits drawn with those weights, valid/test
    # = the union of every domain's, with per-domain rows in the reports. Unset = off.
    config.data.mix = config_dict.placeholder(tuple)
    # A TFDS-prepared dataset (array_record) instead: name, data_dir, image/label features
    # (deepfake_jax/data/tfds_source.py), e.g. --config.data.tfds.name=my_faces
    # --config.data.tfds.data_dir=/data/tfds --config.data.val_split=validation
    config.data.tfds = tfds_source.default_config()
    config.data.train_split = "train"
    config.data.val_split = "valid"
    config.data.test_split = "test"
    config.data.synthetic = ml_collections.ConfigDict(dict(
        train=1500, valid=250, test=250,  # images PER CLASS
        image_size=64, difficulty=0.5, seed=0, workers=1,
    ))

    config.input = ml_collections.ConfigDict()
    config.input.crop_size = 32  # random crops in training, center crop at eval (no resizing)
    config.input.resize_to = config_dict.placeholder(int)  # short side resize before cropping
    # Eval view's center crop (evaluate, predict, app, export); unset: crop_size. Larger than
    # the training crop lets a convolutional net see more of each test image.
    config.input.eval_crop_size = config_dict.placeholder(int)
    config.input.flip_prob = 0.5
    config.input.batch_size = 64  # global, over all devices and processes
    config.input.eval_batch_size = 128
    config.input.num_workers = 0  # grain worker processes for decoding/augmentation
    config.input.mean = (0.485, 0.456, 0.406)
    config.input.std = (0.229, 0.224, 0.225)
    # After crop + flip. preset "none" = crop + flip only (this recipe); "light"/"strong": see
    # deepfake_jax/data/augment.py. Every op's prob and range is in augment.light / augment.strong,
    # e.g. --config.augment.preset=light --config.augment.strong_after_epochs=10
    #      --config.augment.strong.jpeg.quality="(50, 100)"
    config.augment = augment.default_config(preset="none")
    config.mixup_alpha = 0.0  # > 0: MixUp with lam ~ Beta(alpha, alpha) per batch
    config.label_smoothing = 0.0  # binary targets y*(1-eps) + eps/2

    config.model_name = "resnet"
    # A ResNet-18 at 1/4 width with the small-image stem (no 4x early downsampling) on the
    # neighbouring-pixel residual: keeps the 2-4 px upsampling traces of fakes within reach
    # of the first layers. See README "Default recipe" for the measurements behind it.
    config.model = ml_collections.ConfigDict(dict(
        variant="18", width=16, stem="small", input_transform="npr",
        dtype="float32"))  # "bfloat16": bf16 compute, float32 weights (GPU/TPU, AVX512-BF16)
    config.num_classes = 1  # one logit: p_fake = sigmoid(logit)
    # pretrained weights for a new run (README "Models"): path, format, strict; "" = none.
    # format "deepfake_jax": path = another run's workdir (its best checkpoint, else latest) or
    # <workdir>/checkpoints/<step>; use_ema: take that run's EMA weights (what it evaluated).
    config.init_from = ml_collections.ConfigDict(dict(path="", format="", strict=True,
                                                      use_ema=True))

    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3, weight_decay=0.05, b1=0.9, b2=0.999,
        warmup_steps=50, schedule="cosine", end_lr_factor=0.01, grad_clip_norm=1.0,
        freeze=config_dict.placeholder(str),  # "backbone" | "head": zero updates for that group
    ))
    # Keras-style fine-tuning in one run: phase 1 (phase1_steps, else phase1_epochs; 0 = off)
    # trains the head alone at phase1_learning_rate; then everything at the schedule above.
    config.optimizer.two_phase = ml_collections.ConfigDict(dict(
        phase1_epochs=0, phase1_steps=config_dict.placeholder(int), phase1_learning_rate=1e-3,
        phase1_warmup_steps=0))
    # Learning-rate scale x factor after `patience` validations without improvement (0 = off).
    config.optimizer.reduce_on_plateau = ml_collections.ConfigDict(dict(
        metric="val_log_loss", patience=0, factor=0.5, min_scale=1e-3, cooldown=0, min_delta=0.0))
    # Stop after `patience` validations without improvement (0 = off); the final evaluation
    # then uses the best validated checkpoint. "min" for metrics named *loss*, else "max".
    config.early_stopping = ml_collections.ConfigDict(dict(
        metric="val_roc_auc", patience=0, min_delta=0.0))
    config.num_epochs = 20
    config.num_train_steps = config_dict.placeholder(int)  # overrides num_epochs when set
    config.ema_decay = 0.99

    config.log_every_steps = 20
    config.eval_every_steps = 200
    config.halt_after_steps = config_dict.placeholder(int)  # stop (checkpointed) after N steps
    config.checkpoint = ml_collections.ConfigDict(dict(keep_best=2, every_steps=200,
                                                       async_save=True))
    # flip_tta: score = mean p_fake of the image and its mirror (evaluate, predict, app, export)
    config.eval = ml_collections.ConfigDict(dict(use_ema=True, threshold_method="eer",
                                                 flip_tta=False))
    config.mesh = ml_collections.ConfigDict(dict(data=-1))  # -1: every device
    # python -m deepfake_jax.search: what to tune, judged on the validation split (never test).
    config.search = ml_collections.ConfigDict(dict(
        metric="roc_auc", split="valid", direction="maximize", num_trials=20,
        space=(("optimizer.learning_rate", "log", 3e-4, 1e-2),
               ("optimizer.weight_decay", "log", 1e-3, 0.3),
               ("model.width", "choice", (16, 32)),
               ("ema_decay", "choice", (0.99, 0.999))),
    ))

    if arg == "tiny":  # same recipe, test size: seconds on one CPU core
        config.data.synthetic.update(train=48, valid=16, test=16, image_size=32, difficulty=0.0)
        config.input.update(crop_size=28, batch_size=16, eval_batch_size=16)
        config.model.variant = "tiny"
        config.optimizer.warmup_steps = 2
        config.num_epochs = 2
        config.log_every_steps = 2
        config.eval_every_steps = 4
        config.checkpoint.update(every_steps=2, async_save=False)
    elif arg:
        raise ValueError(f"configs/default.py: unknown argument {arg!r}; use nothing or 'tiny'")
    return config
