"""Xception, two-phase training, 5-fold cross-validation (the seeds' Keras Xception recipe).

Data: RVF10K (Kaggle "rvf10k": 10,000 faces, 7,000 train + 3,000 valid, half real, half
GAN-generated); k-fold pools train + valid into 5 seeded, stratified folds:

    python -m data_prep.convert --input /data/rvf10k --output /data/rvf10k_ar

Run (one run per fold in runs/xception_kfold/fold_<i>/, pooled tables in
runs/xception_kfold/kfold/; rerunning continues an interrupted CV):

    python -m deepfake_jax.main --config configs/xception_kfold.py --workdir runs/xception_kfold
    ... --config configs/xception_kfold.py:tiny --workdir /tmp/xk_tiny   # 2 folds, test size

Recipe, as the Keras seed structures it: phase 1 trains only the classifier at 1e-3 with the
backbone frozen (3 epochs), phase 2 trains everything at 1e-4 with fresh optimizer moments
(AdamW, 100 warm-up steps + cosine), up to 20 epochs of batch 64; validation about once an
epoch (every 110 steps; a fold trains on ~7,200 images), early stopping on validation log loss
after 3 validations without improvement, and the learning rate halved after 2 (Keras'
EarlyStopping / ReduceLROnPlateau on val_loss). Short side resized to 256 (a no-op on 256-px
images), random 224 crops, "light" augmentation, EMA 0.999, bf16 compute.

The seed starts from Keras' ImageNet Xception; this project has no importer for those weights
yet, so the backbone starts from its (Keras-style glorot) random init, and phase 1 trains a head
on random features -- a warm-up of the head more than transfer learning. Hyper-parameters the
seed does not record are ours.

Cost (estimate, not measured): Xception at 224 px is ~9.2 GFLOP forward (the published 8.4 G
multiply-adds at 299 px, x2, scaled by (224/299)^2), ~28 GFLOP per training image; a fold is at
most 20 x 7,200 images = 4e15 FLOP, well under a minute of GPU compute; with the input pipeline,
evaluations and compilation ~2-3 min per fold, ~10-15 min for the 5 folds on one GPU (less when
early stopping ends a fold).
"""

import ml_collections

from configs import _recipes, default

ARGS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    config = default.get_config()
    config.kfold = 5
    config.data.dir = _recipes.DATA_RVF10K
    config.input.update(resize_to=256, crop_size=224, batch_size=64, eval_batch_size=256,
                        num_workers=12)
    config.augment.preset = "light"

    config.model_name = "xception"
    config.model = ml_collections.ConfigDict(dict(variant="standard", dtype="bfloat16"))

    config.optimizer.update(name="adamw", learning_rate=1e-4, weight_decay=0.01,
                            warmup_steps=100, schedule="cosine", end_lr_factor=0.01)
    config.optimizer.two_phase.update(phase1_epochs=3, phase1_learning_rate=1e-3,
                                      phase1_warmup_steps=0)
    config.early_stopping.update(metric="val_log_loss", patience=3, min_delta=0.0)
    config.optimizer.reduce_on_plateau.update(metric="val_log_loss", patience=2, factor=0.5,
                                              min_scale=1e-2, cooldown=0, min_delta=0.0)
    config.num_epochs = 20
    config.ema_decay = 0.999
    config.log_every_steps = 20
    config.eval_every_steps = 110  # ~ one epoch of a fold
    config.checkpoint.update(every_steps=110)
    config.search.space = _recipes.optimizer_search_space(3e-5, 1e-3)

    if arg == "tiny":
        config.kfold = 2
        # 2 steps of the frozen-backbone phase, 2 of full training. Early stopping and the
        # plateau rule stay on but see one validation (each costs a checkpoint: seconds).
        _recipes.shrink_to_tiny(config, dict(variant="tiny"), steps=4)
        config.optimizer.two_phase.update(phase1_epochs=0, phase1_steps=2)
    return config
