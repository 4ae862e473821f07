"""DenseNet-121 on Kaggle "140k Real and Fake Faces" (the seeds' DenseNet-121 recipe).

Data: the Kaggle folder converted once (100k train / 20k valid / 20k test, 256-px JPEGs):

    python -m data_prep.convert --input /data/real_vs_fake/real-vs-fake --output /data/140k_ar

Run:

    python -m deepfake_jax.main --config configs/densenet121_140k.py --workdir runs/densenet121_140k
    python -m deepfake_jax.evaluate --workdir runs/densenet121_140k --robustness
    ... --config configs/densenet121_140k.py:tiny --workdir /tmp/dn_tiny   # test size, seconds

Recipe: torchvision/Keras DenseNet-121 (7,978,856 parameters at 1000 classes), trained from
scratch -- the seed fine-tunes Keras' ImageNet DenseNet121; this project has no importer for
DenseNet weights yet. Random 224 crops of the 256-px images (no resize), "light" augmentation,
label smoothing 0.1, AdamW 1e-3, weight decay 0.05, 1,000 warm-up steps + cosine over 10 epochs
of batch 128 (7,810 steps), validation every 1,000 steps with early stopping after 3 validations
without a better ROC AUC (Keras' EarlyStopping), EMA 0.999, bf16 compute. Hyper-parameters the
seed does not record are ours.

Cost (estimate, not measured): ~5.7 GFLOP forward at 224 px (2.87 G multiply-adds), ~17 GFLOP
per training image, 1M training images = 1.7e16 FLOP; DenseNet's concatenations use a GPU
poorly (say 15% of bf16 peak), ~2 min of compute on one H100-class GPU; with the input pipeline
(12 workers) ~5-10 min per run.
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
    config.label_smoothing = 0.1

    config.model_name = "densenet"
    config.model = ml_collections.ConfigDict(dict(variant="121", dtype="bfloat16"))

    config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.05,
                            warmup_steps=1000, schedule="cosine", end_lr_factor=0.01)
    config.early_stopping.update(metric="val_roc_auc", patience=3, min_delta=0.0)
    config.num_epochs = 10
    config.ema_decay = 0.999
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint.update(every_steps=1000)
    config.search.space = _recipes.optimizer_search_space(1e-4, 3e-3)

    if arg == "tiny":
        # early stopping stays on but sees one validation (each costs a checkpoint: seconds)
        _recipes.shrink_to_tiny(config, dict(variant="tiny"))
    return config
