"""ViT-B/16 fine-tuned on CIPLab "Real and Fake Face Detection" (the seeds' ViT on CIPLab).

Data: Kaggle's `real_and_fake_face/{training_real,training_fake}` (1,081 real + 960 expert
photoshopped faces, 600x600 JPEG; no official split: a seeded, stratified 80/10/10 one, recorded
in records.csv; fakes keep their difficulty and edited-region metadata):

    python -m data_prep.convert --input /data/real_and_fake_face --output /data/ciplab_ar \
        --split_ratios 0.8,0.1,0.1 --split_seed 0

Run (ImageNet-21k weights: a Hugging Face `save_pretrained` folder you provide; 1.6k training
images are far too few to train a ViT from scratch):

    python -m deepfake_jax.main --config configs/vit_ciplab.py --workdir runs/vit_ciplab \
        --config.init_from.path=/weights/vit-base-patch16-224-in21k
    python -m deepfake_jax.evaluate --workdir runs/vit_ciplab --bootstrap 1000
    ... --config configs/vit_ciplab.py:tiny --workdir /tmp/vit_ciplab_tiny   # test size

The evaluation tables break the test split down by CIPLab difficulty (easy/mid/hard) and by
edited region (left eye, right eye, nose, mouth).

Recipe: photoshopped regions, not generator upsampling, make these fakes, so resizing is
harmless: short side resized to 256, random 224 crops (center crop at evaluation); HF ViT
normalisation; AdamW 2e-5, weight decay 0.05, 50 warm-up steps + cosine, 10 epochs of batch 32
(~510 steps), label smoothing 0.1, "light" augmentation, stochastic depth 0.1, EMA 0.99 (a short
run: a short EMA horizon), bf16 compute. Hyper-parameters beyond "ViT-B/16 on CIPLab" are ours.

Cost (estimate, not measured): 16k training images x 107 GFLOP = 1.7e15 FLOP, seconds of GPU
compute; decoding the 600-px JPEGs dominates: ~1-2 min per run on one GPU with 8 workers, plus
compilation.
"""

import ml_collections

from configs import _recipes, vit_b16_140k

ARGS = ("tiny",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _recipes.check_arg(__file__, arg, ARGS)
    # The 140k ViT recipe (model, HF init, normalisation, light aug, label smoothing), on a
    # small data set: resized inputs, smaller batches, lower rate, more epochs, shorter EMA.
    config = vit_b16_140k.get_config()
    config.data.dir = _recipes.DATA_CIPLAB
    config.input.update(resize_to=256, batch_size=32, eval_batch_size=64, num_workers=8)
    config.optimizer.update(learning_rate=2e-5, warmup_steps=50)
    config.num_epochs = 10
    config.ema_decay = 0.99
    config.log_every_steps = 10
    config.eval_every_steps = 50
    config.checkpoint.update(every_steps=50, async_save=False)
    config.search.space = _recipes.optimizer_search_space(5e-6, 1e-4)

    if arg == "tiny":
        _recipes.shrink_to_tiny(config, dict(variant="tiny", image_size=_recipes.TINY_IMAGE_SIZE,
                                             dropout=0.0, drop_path=0.1))
    return config
