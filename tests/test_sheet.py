"""Contact sheets: labels never cover image pixels, images arrive unchanged, failures say why."""

import itertools

import numpy as np
import pytest

from nst_jax import image_io
from nst_jax import sheet


def _overlap(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _image(seed, h, w):
  # Already on the 8-bit grid, so the sheet must reproduce it exactly.
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.float32) / 255.0


def _check_layout(result):
  """No text box overlaps any image box; all boxes lie inside the sheet."""
  h, w = result.image.shape[:2]
  for box in itertools.chain(result.image_boxes.values(), result.text_boxes.values()):
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h, box
  for (tk, t), (ik, i) in itertools.product(result.text_boxes.items(),
                                            result.image_boxes.items()):
    assert not _overlap(t, i), (tk, t, ik, i)
  for a, b in itertools.combinations(result.image_boxes.values(), 2):
    assert not _overlap(a, b)


def _ink(image, box) -> int:
  left, top, right, bottom = box
  return int((image[top:bottom, left:right] < 0.9).any(axis=-1).sum())


def test_grid_labels_outside_images_and_pixels_unchanged():
  # 2 contents x 2 styles, one style a blend with a long name, one content
  # unreadable: the acceptance case of issue 15.
  size = 64
  contents = [_image(0, 48, 64), 'missing.jpg: not found; check the path']
  styles = [_image(1, 64, 40), _image(2, 64, 64)]
  long_name = 'woman-with-hat-matisse+starry_night_google_art_project'
  cells = [[_image(3, 48, 64), 'starry.jpg: out of memory'], [None, None]]
  result = sheet.grid(contents, styles, cells, row_labels=['tubingen.jpg', 'missing.jpg'],
                      column_labels=['the_scream.jpg', long_name], cell_size=size)
  _check_layout(result)
  img = result.image
  for key, source in [(('row', 0), contents[0]), (('column', 0), styles[0]),
                      (('column', 1), styles[1]), (('cell', 0, 0), cells[0][0])]:
    left, top, right, bottom = result.image_boxes[key]
    np.testing.assert_array_equal(img[top:bottom, left:right], source)
  # Every title and failure message put ink on the sheet, inside its band.
  for key in [('row', 0), ('row', 1), ('column', 0), ('column', 1), ('row', 1, 'failure'),
              ('cell', 0, 1, 'failure')]:
    assert _ink(img, result.text_boxes[key]) > 10, key
  # The long title stays within its column (it wraps or is shortened).
  col = result.image_boxes[('column', 1)]
  title = result.text_boxes[('column', 1)]
  assert title[0] >= col[0] - 1 and title[2] <= col[2] + 1
  # Failure messages are red.
  left, top, right, bottom = result.text_boxes[('cell', 0, 1, 'failure')]
  region = img[top:bottom, left:right]
  assert ((region[..., 0] > 0.5) & (region[..., 1] < 0.4)).any()


def test_grid_resizes_to_cell_size():
  big = _image(0, 200, 100)
  result = sheet.grid([big], [big], [[big]], cell_size=50)
  left, top, right, bottom = result.image_boxes[('cell', 0, 0)]
  assert (bottom - top, right - left) == (50, 25)
  np.testing.assert_allclose(result.image[top:bottom, left:right],
                             np.clip(image_io.resize_longest(big, 50), 0, 1), atol=0.5 / 255 + 1e-6)


def test_grid_rejects_wrong_cell_count():
  with pytest.raises(ValueError, match='cells must be 1 rows of 2'):
    sheet.grid([_image(0, 8, 8)], [_image(0, 8, 8)] * 2, [[None]])


def test_fit_text_wraps_then_shortens_in_the_middle():
  font = sheet._font(13)  # pylint: disable=protected-access
  name = 'woman-with-hat-matisse+starry_night_google'
  lines = sheet.fit_text(name, font, width=120, max_lines=2)
  assert 1 <= len(lines) <= 2
  assert all(sheet._text_width(line, font) <= 120 for line in lines)  # pylint: disable=protected-access
  joined = ''.join(lines)
  assert joined.startswith('woman-with-') and joined.endswith('google')
  one = sheet.fit_text(name, font, width=120, max_lines=1)
  assert len(one) == 1 and sheet.ELLIPSIS in one[0]
  assert one[0].startswith('woman') and one[0].endswith('gle')
  assert sheet.fit_text('short', font, 120, 1) == ['short']
  assert sheet.shorten_middle('abcdefghij', 5) == 'abc…ij'


def test_tiles_layout_and_pixels():
  images = [_image(k, 30, 40) for k in range(5)] + ['broken.jpg: corrupt']
  titles = ['original'] + [f'style {k}' for k in range(4)] + ['broken']
  result = sheet.tiles(images, titles, columns=4, tile_size=None)
  _check_layout(result)
  assert len(result.image_boxes) == 5
  for k in range(5):
    left, top, right, bottom = result.image_boxes[('tile', k)]
    np.testing.assert_array_equal(result.image[top:bottom, left:right], images[k])
    assert _ink(result.image, result.text_boxes[('tile', k)]) > 5
  assert ('tile', 5, 'failure') in result.text_boxes
  # Tile 4 starts the second row, below tile 0.
  assert result.image_boxes[('tile', 4)][1] > result.image_boxes[('tile', 0)][3]


@pytest.mark.parametrize('bad', [0, -1, 1.5, True])
def test_tiles_rejects_bad_columns(bad):
  with pytest.raises(ValueError, match='columns'):
    sheet.tiles([_image(0, 8, 8)], columns=bad)
