"""deepfake_jax: JAX/Flax detectors of AI-generated face images, and face segmentation."""

from deepfake_jax import xla_options

xla_options.set_cpu_flags()
