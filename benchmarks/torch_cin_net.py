"""A plain-PyTorch twin of the CIN network and of one training step.

Written independently with ``torch.nn.functional`` (NCHW) from the layout in
``nst_jax.cin_net`` (Dumoulin et al. 2017 on the architecture of Johnson et
al. 2016) and the perceptual loss of ``nst_jax.train``; the VGG19 and Gram
matrices come from the PyTorch twin of the optimisation objective
(``benchmarks.torch_twin``). Used by the gradient-parity test and the training
benchmark; never by the library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

try:
  from benchmarks import torch_twin
except ImportError:  # Before the move out of the package.
  from nst_jax import torch_twin  # type: ignore[no-redef]

NUM_RESIDUAL = 6
EPS = 1e-5


def layer_names() -> list[str]:
  return (['contract.0', 'contract.1', 'contract.2']
          + [f'res.{i}.{j}' for i in range(NUM_RESIDUAL) for j in range(2)]
          + ['expand.0', 'expand.1', 'expand.2'])


def params_to_torch(params: Mapping[str, np.ndarray], requires_grad: bool = False,
                    device: str = 'cpu') -> dict[str, torch.Tensor]:
  """Flat nst_jax params -> torch tensors (kernels HWIO -> OIHW), same keys."""
  out = {}
  for k, v in params.items():
    a = np.asarray(v, np.float32)
    if k.endswith('.kernel'):
      a = a.transpose(3, 2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    out[k] = t.requires_grad_(requires_grad)
  return out


def grads_to_nst(grads: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
  """Inverse layout of ``params_to_torch`` for gradients."""
  out = {}
  for k, g in grads.items():
    a = g.detach().cpu().numpy()
    out[k] = a.transpose(2, 3, 1, 0) if k.endswith('.kernel') else a
  return out


def _conv_cin(p, name, x, w, stride=1):
  kernel = p[f'{name}.kernel']
  pad = kernel.shape[-1] // 2
  x = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode='reflect'), kernel, stride=stride)
  mean = x.mean(dim=(2, 3), keepdim=True)
  var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
  gamma = (w @ p[f'{name}.gamma'])[:, :, None, None]
  beta = (w @ p[f'{name}.beta'])[:, :, None, None]
  return (x - mean) / torch.sqrt(var + EPS) * gamma + beta


def forward(p: Mapping[str, torch.Tensor], images: torch.Tensor,
            style_weights: torch.Tensor) -> torch.Tensor:
  """images [B, 3, H, W] RGB in [0, 1], style_weights [B, N] -> [B, 3, H, W]."""
  _, _, h, w = images.shape
  ph, pw = (-h) % 4, (-w) % 4
  x = F.pad(images, (0, pw, 0, ph), mode='reflect') if ph or pw else images
  x = F.relu(_conv_cin(p, 'contract.0', x, style_weights))
  x = F.relu(_conv_cin(p, 'contract.1', x, style_weights, 2))
  x = F.relu(_conv_cin(p, 'contract.2', x, style_weights, 2))
  for i in range(NUM_RESIDUAL):
    y = F.relu(_conv_cin(p, f'res.{i}.0', x, style_weights))
    x = x + _conv_cin(p, f'res.{i}.1', y, style_weights)
  x = F.relu(_conv_cin(p, 'expand.0', F.interpolate(x, scale_factor=2, mode='nearest'),
                       style_weights))
  x = F.relu(_conv_cin(p, 'expand.1', F.interpolate(x, scale_factor=2, mode='nearest'),
                       style_weights))
  x = _conv_cin(p, 'expand.2', x, style_weights)
  return torch.sigmoid(x)[:, :, :h, :w]


def preprocess(rgb: torch.Tensor, mean_bgr: Sequence[float]) -> torch.Tensor:
  """Caffe VGG19 input: RGB [0, 1] NCHW -> BGR, 0-255, minus the mean pixel."""
  bgr = rgb.flip(1) * 255.0
  mean = torch.tensor(mean_bgr, dtype=bgr.dtype, device=bgr.device)
  return bgr - mean[None, :, None, None]


def batch_gram(f: torch.Tensor) -> torch.Tensor:
  """[B, C, H, W] -> [B, C, C] / (C H W)."""
  b, c, h, w = f.shape
  m = f.reshape(b, c, h * w)
  return m @ m.transpose(1, 2) / (c * h * w)


def perceptual_loss(p, vgg_tparams, images: torch.Tensor, styles: torch.Tensor,
                    grams: Mapping[str, torch.Tensor], mean_bgr, *, num_styles: int,
                    content_layers=('relu4_2',),
                    style_layers=('relu1_1', 'relu2_1', 'relu3_1', 'relu4_1', 'relu5_1'),
                    content_weight=5.0, style_weight=100.0, tv_weight=1e-3):
  """Batch mean of the Gatys objective of the network's output; returns (loss, terms)."""
  out = forward(p, images, F.one_hot(styles, num_styles).to(images.dtype))
  taps = list(dict.fromkeys(list(content_layers) + list(style_layers)))
  with torch.no_grad():
    cf = torch_twin.vgg_features(vgg_tparams, preprocess(images, mean_bgr), content_layers)
  x = preprocess(out, mean_bgr)
  feats = torch_twin.vgg_features(vgg_tparams, x, taps)
  terms = {}
  for l in content_layers:
    terms[f'content/{l}'] = content_weight * ((feats[l] - cf[l]) ** 2).mean()
  for l in style_layers:
    g = batch_gram(feats[l])
    terms[f'style/{l}'] = style_weight * ((g - grams[l][styles]) ** 2).mean(dim=(1, 2)).mean()
  base = x[:, :, :-1, :-1]
  dx = base - x[:, :, :-1, 1:]
  dy = base - x[:, :, 1:, :-1]
  terms['tv'] = tv_weight * 0.5 * (dx ** 2 + dy ** 2).sum(dim=(1, 2, 3)).mean()
  return sum(terms.values()), terms


def make_train_step(p: dict, vgg_tparams, grams, mean_bgr, num_styles: int,
                    learning_rate: float = 1e-3, autocast_bf16: bool = False):
  """One Adam step of the whole network (mode ``new``): ``step(images, styles) -> loss``.

  ``autocast_bf16`` runs the forward pass under ``torch.autocast`` in bfloat16
  (on the images' device), PyTorch's usual mixed precision: float32
  parameters and optimizer, bfloat16 convolutions and matrix products.
  """
  leaves = [v.requires_grad_(True) for v in p.values()]
  opt = torch.optim.Adam(leaves, lr=learning_rate)

  def step(images, styles):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
      loss, _ = perceptual_loss(p, vgg_tparams, images, styles, grams, mean_bgr,
                                num_styles=num_styles)
    loss.backward()
    opt.step()
    return loss.detach()
  return step
