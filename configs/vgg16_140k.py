"""VGG-16 on Kaggle "140k Real and Fake Faces" (the seeds' VGG-16 recipe).

Data: the Kaggle folder converted once (100k train / 20k valid / 20k test, 256-px JPEGs):

    python -m data_prep.convert --input /data/real_vs_fake/real-vs-fake --output /data/140k_ar

Run:

    python -m deepfake_jax.main --config configs/vgg16_140k.py --workdir runs/vgg16_140k
    python -m deepfake_jax.evaluate --workdir runs/vgg16_140k --robustness
    ... --config configs/vgg16_140k.py:tiny --workdir /tmp/vgg_tiny   # test size, seconds

Recipe: Keras/torchvision VGG-16 (no BatchNorm; 138,357,544 parameters at 1000 classes, the two
4096-wide dense layers with dropout 0.5), trained from scratch -- the seed fine-tunes Keras'
ImageNet VGG16; this project has no importer for VGG weights yet. Random 224 crops of the 256-px
images (no resize), "light" augmentation, SGD with Nesterov momentum 0.9 at a constant 5e-3 after
1,000 warm-up steps, weight decay 5e-4, gradient clipping at norm 1, the learning rate halved
after 2 validations (every 1,000 steps) without a lower validation log loss, down to 1/100
(Keras' ReduceLROnPlateau), 10 epochs of batch 128 (7,810 steps), EMA 0.999, bf16 compute.
Hyper-parameters the seed does not record are ours.

Cost (estimate, not measured): ~31 GFLOP forward at 224 px (15.5 G multiply-adds), ~93 GFLOP
per training image, 1M training images = 9.3e16 FLOP, ~4-5 min of compute on one H100-class GPU
at ~40% of bf16 peak; ~5-10 min per run with the input pipeline (12 workers).
"""

import ml_collections

from configs import _recipes, default

ARGS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    config = default.get_config()
    config.data.dir = _recipes.DATA_140K
    config.input.update(crop_size=224, batch_size=128, eval_batch_size=256, num_workers=12)
    config.augment.preset = "light"

    config.model_name = "vgg"
    config.model = ml_collections.ConfigDict(dict(variant="16", dropout=0.5, dtype="bfloat16"))

    config.optimizer.update(name="sgd", learning_rate=5e-3, momentum=0.9, weight_decay=5e-4,
                            warmup_steps=1000, schedule="constant", grad_clip_norm=1.0)
    config.optimizer.reduce_on_plateau.update(metric="val_log_loss", patience=2, factor=0.5,
                                              min_scale=1e-2, cooldown=0, min_delta=0.0)
    config.num_epochs = 10
    config.ema_decay = 0.999
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint.update(every_steps=1000)
    config.search.space = _recipes.optimizer_search_space(1e-3, 3e-2)

    if arg == "tiny":
        # the plateau rule stays on but sees one validation (each costs a checkpoint: seconds)
        _recipes.shrink_to_tiny(config, dict(variant="tiny", dropout=0.5))
    return config
