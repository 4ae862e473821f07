"""The seeds' small Keras CNN baseline, trained as the seed notebooks train it.

Data: any converted real/fake data set; by default Kaggle 140k (256-px JPEGs), e.g.

    python -m data_prep.convert --input /data/real_vs_fake/real-vs-fake --output /data/140k_ar
    python -m data_prep.convert --input seed_data --output /data/seed_ar   # {train,valid,test}/
                                                                          # {real,fake}_faces/
Run:

    python -m deepfake_jax.main --config configs/small_cnn.py --workdir runs/small_cnn \
        [--config.data.dir=/data/seed_ar]
    ... --config configs/small_cnn.py:tiny --workdir /tmp/cnn_tiny   # test size, seconds

Recipe, the seed's Keras baseline as it is: 3 x (conv 3x3 + 2x2 max-pool) with 32/64/128
filters, dense 128, dropout 0.5 (models/cnn.py; 3,304,769 parameters at 128 px); images resized
to 128x128 and scaled to [0, 1] (Keras `rescale=1/255`: mean 0, std 1), horizontal flips only;
Adam 1e-3 at a constant rate (no warm-up, no weight decay, no clipping), 10 epochs of batch 32,
the raw weights evaluated (no EMA). `configs/small_data_faces.py:seed_cnn` runs the same network
inside that recipe's crops and optimiser for a like-for-like comparison.

Cost (estimate, not measured): ~0.3 GFLOP forward at 128 px; 1M training images are seconds of
GPU compute -- the run is bound by decoding and resizing the JPEGs: ~3-5 min on one GPU with 8
grain workers.
"""

import ml_collections

from configs import _recipes, default

ARGS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    config = default.get_config()
    config.data.dir = _recipes.DATA_140K
    config.input.update(resize_to=128, crop_size=128, batch_size=32, eval_batch_size=128,
                        num_workers=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    config.model_name = "cnn"
    config.model = ml_collections.ConfigDict(dict(variant="seed", image_size=128, dropout=0.5,
                                                  dtype="float32"))

    config.optimizer.update(name="adamw", learning_rate=1e-3, weight_decay=0.0, warmup_steps=0,
                            schedule="constant", grad_clip_norm=0.0)
    config.num_epochs = 10
    config.eval.use_ema = False  # Keras evaluates the trained weights
    config.log_every_steps = 100
    config.eval_every_steps = 3125  # one epoch of 100k images
    config.checkpoint.update(every_steps=3125)
    config.search.space = _recipes.optimizer_search_space(1e-4, 1e-2)

    if arg == "tiny":
        _recipes.shrink_to_tiny(config, dict(variant="tiny", image_size=_recipes.TINY_IMAGE_SIZE,
                                             dropout=0.5))
    return config
