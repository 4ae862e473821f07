"""ViT-B/16 fine-tuned on Kaggle "140k Real and Fake Faces" (the seeds' ViT recipe).

Data: the Kaggle folder converted once (100k train / 20k valid / 20k test, 256-px JPEGs; FFHQ
reals, StyleGAN fakes):

    python -m data_prep.convert --input /data/real_vs_fake/real-vs-fake --output /data/140k_ar

Run (pretrained ImageNet-21k weights: a Hugging Face `save_pretrained` folder of
google/vit-base-patch16-224-in21k that you provide -- nothing is downloaded; its head is
replaced by a fresh 1-logit one):

    python -m deepfake_jax.main --config configs/vit_b16_140k.py --workdir runs/vit_b16_140k \
        --config.init_from.path=/weights/vit-base-patch16-224-in21k
    python -m deepfake_jax.evaluate --workdir runs/vit_b16_140k --robustness
    ... --config configs/vit_b16_140k.py:tiny --workdir /tmp/vit_tiny   # test size, seconds

Without `init_from.path` the same recipe trains a ViT-B/16 from scratch (far worse on 100k images).

Recipe: random 224-px crops of the 256-px images at native resolution (no resize: resizing blurs
generator traces), center crop at evaluation; the HF ViT normalisation (mean = std = 0.5);
AdamW 5e-5, weight decay 0.05, 500 warm-up steps + cosine, 5 epochs of batch 128 (3,905
steps), label smoothing 0.1, the "light" augmentation preset (mild colour jitter, blur + JPEG
with p 0.1), stochastic depth 0.1, EMA 0.999, bf16 compute. The seed records no more than
"ViT-B/16 fine-tuned on 140k"; these hyper-parameters are ours (usual ViT fine-tuning values).

Cost (estimate, not measured): 107 GFLOP per training image (3x the 35.7 GFLOP forward XLA
counts), 500k training images -> ~5e16 FLOP, 2-3 min of compute on one H100-class GPU at ~40%
of bf16 peak; decoding + augmenting 500k JPEGs with 12 grain workers (~400 img/s per core
measured on CPU) takes longer: expect ~5-10 min per run plus compilation and evaluations.
"""

import ml_collections

from configs import _recipes, default

ARGS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    config = default.get_config()
    config.data.dir = _recipes.DATA_140K
    config.input.update(crop_size=224, batch_size=128, eval_batch_size=256, num_workers=12,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # HF ViT normalisation
    config.augment.preset = "light"
    config.label_smoothing = 0.1

    config.model_name = "vit"
    config.model = ml_collections.ConfigDict(dict(
        variant="B/16", image_size=224, dropout=0.0, drop_path=0.1, dtype="bfloat16"))
    config.init_from.update(path="", format="hf_vit")  # set path to the in21k folder

    config.optimizer.update(name="adamw", learning_rate=5e-5, weight_decay=0.05,
                            warmup_steps=500, schedule="cosine", end_lr_factor=0.01)
    config.num_epochs = 5
    config.ema_decay = 0.999
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint.update(every_steps=1000)
    config.search.space = _recipes.optimizer_search_space(1e-5, 3e-4)

    if arg == "tiny":
        _recipes.shrink_to_tiny(config, dict(variant="tiny", image_size=_recipes.TINY_IMAGE_SIZE,
                                             dropout=0.0, drop_path=0.1))
    return config
