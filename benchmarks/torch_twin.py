"""A plain-PyTorch twin of the nst_jax objective, for parity tests and benchmarks.

Written independently with ``torch.nn.functional`` (NCHW), following the same
definitions as ``nst_jax.losses`` and jcjohnson/neural-style. It is *not* used
by the library itself; importing it needs torch (``pip install torch==2.13.0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nst_jax import vgg as _vgg


def params_to_torch(params: Mapping, device='cpu', dtype=torch.float32) -> dict:
  """HWIO numpy/jax kernels -> OIHW torch tensors."""
  out = {}
  for name, layer in params.items():
    k = torch.from_numpy(np.array(np.transpose(np.asarray(layer['kernel']),
                                                           (3, 2, 0, 1))))
    b = torch.from_numpy(np.array(layer['bias'], copy=True))
    out[name] = (k.to(device, dtype), b.to(device, dtype))
  return out


def vgg_features(tparams: Mapping, x: torch.Tensor, taps: Sequence[str],
                 pooling: str = 'max') -> dict[str, torch.Tensor]:
  """VGG19 taps for NCHW input ``x``, stopping at the deepest tap."""
  wanted = set(taps)
  last = max(_vgg.LAYER_NAMES.index(t) for t in taps)
  out = {}
  for name in _vgg.LAYER_NAMES[:last + 1]:
    if name.startswith('conv'):
      w, b = tparams[name]
      x = F.conv2d(x, w, b, padding=1)
    elif name.startswith('relu'):
      x = F.relu(x)
    elif pooling == 'max':
      x = F.max_pool2d(x, 2, 2)
    else:
      x = F.avg_pool2d(x, 2, 2)
    if name in wanted:
      out[name] = x
  return out


def gram(f: torch.Tensor) -> torch.Tensor:
  """[1, C, H, W] -> [C, C] / (C H W)."""
  _, c, h, w = f.shape
  m = f.reshape(c, h * w)
  return (m @ m.t()) / (c * h * w)


def make_targets(tparams, content: torch.Tensor, styles: Sequence[torch.Tensor],
                 blend: Sequence[float], content_layers, style_layers, pooling='max'):
  with torch.no_grad():
    cf = vgg_features(tparams, content, content_layers, pooling)
    total = float(sum(blend))
    grams = {l: 0 for l in style_layers}
    for s, w in zip(styles, blend):
      sf = vgg_features(tparams, s, style_layers, pooling)
      for l in style_layers:
        grams[l] = grams[l] + (w / total) * gram(sf[l])
  return {'content': {l: cf[l] for l in content_layers}, 'style': grams}


def total_loss(image: torch.Tensor, tparams, targets, content_weight=5.0,
               style_weight=100.0, tv_weight=1e-3, pooling='max'):
  """Returns (total, terms) for NCHW ``image`` [1, 3, H, W]."""
  cl = list(targets['content'])
  sl = list(targets['style'])
  feats = vgg_features(tparams, image, list(dict.fromkeys(cl + sl)), pooling)
  terms = {}
  for l in cl:
    terms[f'content/{l}'] = content_weight * F.mse_loss(feats[l], targets['content'][l])
  for l in sl:
    terms[f'style/{l}'] = style_weight * F.mse_loss(gram(feats[l]), targets['style'][l])
  x = image[:, :, :-1, :-1]
  dx = x - image[:, :, :-1, 1:]
  dy = x - image[:, :, 1:, :-1]
  terms['tv'] = tv_weight * 0.5 * (dx.pow(2) + dy.pow(2)).sum()
  total = sum(terms.values())
  return total, terms


def nhwc_to_nchw(x) -> torch.Tensor:
  """[H, W, C] or [B, H, W, C] numpy -> [B, C, H, W] torch float32."""
  a = np.asarray(x, np.float32)
  if a.ndim == 3:
    a = a[None]
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def run_lbfgs(image: torch.Tensor, loss_fn, num_iterations: int,
              history_size: int = 100, learning_rate: float = 1.0):
  """torch.optim.LBFGS as the reference CLIs use it: one evaluation per iteration.

  Returns (final image, list of loss values, one per evaluation).
  """
  x = image.clone().requires_grad_(True)
  opt = torch.optim.LBFGS([x], lr=learning_rate, max_iter=num_iterations,
                          history_size=history_size,
                          tolerance_grad=-1, tolerance_change=-1, line_search_fn=None)
  values = []

  def closure():
    opt.zero_grad()
    loss = loss_fn(x)
    loss.backward()
    values.append(float(loss.detach()))
    return loss

  opt.step(closure)
  return x.detach(), values
