"""ResNet-50 in two stages (the seeds' two-stage ResNet recipe): pretrain on 140k, then fine-tune
on 140k + CIPLab with MixUp and domain balancing.

Data (README "Your own data"):

    python -m data_prep.convert --input /data/real_vs_fake/real-vs-fake --output /data/140k_ar
    python -m data_prep.convert --input /data/real_and_fake_face --output /data/ciplab_ar \
        --split_ratios 0.8,0.1,0.1 --split_seed 0

Run (stage 2 starts from stage 1's best checkpoint, its EMA weights: what stage 1 evaluated):

    python -m deepfake_jax.main --config configs/resnet50_two_stage.py:pretrain \
        --workdir runs/r50_pretrain [--config.init_from.path=resnet50.safetensors]
    python -m deepfake_jax.main --config configs/resnet50_two_stage.py:finetune \
        --workdir runs/r50_finetune --config.init_from.path=runs/r50_pretrain
    python -m deepfake_jax.evaluate --workdir runs/r50_finetune --robustness

No argument = `pretrain`. `finetune` reads `runs/r50_pretrain` unless `init_from.path` says
otherwise; the domains and their weights are `config.data.mix` ((name, converted dir, weight)
triples). Test size: `pretrain_tiny` (alias `tiny`) then `finetune_tiny` with
`--config.init_from.path=<the pretrain_tiny workdir>`; the tiny fine-tune trains on one
synthetic domain (`data.mix` unset: converted folders cannot be named in a config), give it
`--config.data.mix` to mix.

Stage 1 (`pretrain`): torchvision ResNet-50 (ImageNet stem, full width; optional ImageNet
weights with `--config.init_from.path=... --config.init_from.format` left at torchvision_resnet),
random 224 crops of the 256-px images, AdamW 1e-3, weight decay 0.05, a long 2,000-step warm-up
then cosine over 10 epochs of batch 128 (7,810 steps), the "light" augmentation for epochs 0-4
and "strong" (blur/JPEG p 0.5, colour, RandAugment, noise, erasing) from epoch 5, EMA 0.9999,
bf16 compute.
Stage 2 (`finetune`): the same network from stage 1 (`init_from.format=deepfake_jax`), 50/50
domain-balanced batches of 140k and CIPLab (CIPLab's 600-px images resized to 256 like 140k's),
MixUp alpha 0.2, "strong" augmentation, AdamW 1e-4 with 200 warm-up steps + cosine over 3
epochs, EMA 0.9999. Hyper-parameters the seed does not record are ours.

Cost (estimate, not measured): stage 1 = 1M training images x 24 GFLOP (3x the 8.0 GFLOP
forward) = 2.4e16 FLOP, 1-2 min of compute on one H100-class GPU; the strong augmentation
(JPEG re-encode, RandAugment) on 12 grain workers is the bound: ~5-10 min. Stage 2 is ~1/3 of
that.
"""

import ml_collections

from configs import _recipes, default

ARGS = ("pretrain", "finetune", "tiny", "pretrain_tiny", "finetune_tiny")
PRETRAIN_WORKDIR = "runs/r50_pretrain"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    stage = "finetune" if arg in ("finetune", "finetune_tiny") else "pretrain"
    config = default.get_config()
    config.data.dir = _recipes.DATA_140K
    config.input.update(crop_size=224, batch_size=128, eval_batch_size=256, num_workers=12)
    config.model_name = "resnet"
    config.model = ml_collections.ConfigDict(dict(variant="50", dtype="bfloat16"))  # torchvision
    config.ema_decay = 0.9999
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint.update(every_steps=1000)

    if stage == "pretrain":
        config.init_from.update(path="", format="torchvision_resnet")  # optional ImageNet weights
        config.augment.preset = "light"
        config.augment.strong_after_epochs = 5
        config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.05,
                                warmup_steps=2000, schedule="cosine", end_lr_factor=0.01)
        config.num_epochs = 10
    else:
        config.init_from.update(path=PRETRAIN_WORKDIR, format="deepfake_jax", use_ema=True)
        config.data.dir = None
        config.data.mix = (("140k", _recipes.DATA_140K, 0.5),
                           ("ciplab", _recipes.DATA_CIPLAB, 0.5))
        config.input.resize_to = 256  # CIPLab is 600 px; 140k's 256 px stay as they are
        config.augment.preset = "strong"
        config.mixup_alpha = 0.2
        config.optimizer.update(name="adamw", learning_rate=1e-4, weight_decay=0.05,
                                warmup_steps=200, schedule="cosine", end_lr_factor=0.01)
        config.num_epochs = 3

    if arg in ("tiny", "pretrain_tiny", "finetune_tiny"):
        _recipes.shrink_to_tiny(config, dict(variant="tiny"), steps=4)
        if stage == "pretrain":
            # 3 steps per tiny epoch (48 images): step 4 sees the strong preset
            config.augment.strong_after_epochs = 1
        else:
            config.init_from.path = PRETRAIN_WORKDIR + "_tiny"
            config.data.mix = None  # one synthetic domain; the tests pass two converted ones
    return config
