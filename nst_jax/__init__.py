"""nst_jax: neural style transfer (Gatys, Ecker & Bethge) in JAX and Flax.

The pieces, one module each: ``vgg`` (the network), ``weights`` (weight sets
and porting), ``losses`` (the objective as pure functions), ``lbfgs`` (the
optimizer), ``color`` (colour control), ``image_io`` (files), ``config`` (the
settings), ``stylize`` (the run loop) and ``matrix`` (many images at once).
"""

from nst_jax.config import ConfigError
from nst_jax.config import StyleConfig
from nst_jax.image_io import ImageError
from nst_jax.image_io import load_image
from nst_jax.image_io import save_image
from nst_jax.lbfgs import scale_by_torch_lbfgs
from nst_jax.losses import LossSpec
from nst_jax.losses import content_loss
from nst_jax.losses import default_loss_weights
from nst_jax.losses import gram
from nst_jax.losses import make_targets
from nst_jax.losses import style_loss
from nst_jax.losses import total_loss
from nst_jax.losses import tv_loss
from nst_jax.matrix import StyleSpec
from nst_jax.matrix import stylize_many
from nst_jax.stylize import Interrupted
from nst_jax.stylize import NonFiniteError
from nst_jax.stylize import StyleResult
# nst_jax.stylize(...) is exported once the run-loop module is renamed (see README).
from nst_jax.vgg import VGG19
from nst_jax.vgg import features
from nst_jax.weights import WeightSet
from nst_jax.weights import WeightsError
from nst_jax.weights import load as load_weights

__version__ = '0.1.0'
