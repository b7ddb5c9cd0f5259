"""Labelled contact sheets as arrays: a content x style grid, or titled tiles.

Two layouts, both drawn with Pillow and returned as float RGB arrays:

- `grid`: a header row of column images (e.g. styles), a header column of
  row images (e.g. contents), and one cell per (row, column) holding an
  image or the reason it failed ("failed: photo.jpg: not found").
- `tiles`: N titled images in C columns (the 26 built-in styles on one
  photo, training previews).

Titles sit in bands of their own above the images, so no label ever covers
an image pixel; a long title wraps onto a second line and, if it still does
not fit, is shortened in the middle ("woman-with-h…night_g"), keeping both
ends readable. Every function returns a `Sheet`: the image plus the boxes
of what was drawn where, which callers (and the tests) can use to find a
cell or to check that nothing overlaps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from nst_jax import image_io

# A cell is an image [H, W, 3] in [0, 1], a failure reason, or nothing.
Cell = np.ndarray | str | None

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
FAILED = (180, 20, 20)
ELLIPSIS = '…'
# Wrapping prefers to break after these, so "starry_night+the_scream" splits
# at a word boundary rather than in the middle of a word.
_BREAK_AFTER = ' -_+@,/'


@dataclasses.dataclass(frozen=True)
class Sheet:
  """A rendered contact sheet.

  Attributes:
    image: float32 [H, W, 3] RGB in [0, 1].
    image_boxes: where each image was pasted, keyed by its position:
      ('row', i), ('column', j) and ('cell', i, j) for `grid`, ('tile', k)
      for `tiles`.
    text_boxes: the bounding box of every piece of text drawn: titles keyed
      like `image_boxes`, failure messages by the same key plus 'failure'
      (e.g. ('cell', 1, 0, 'failure')).
  """
  image: np.ndarray
  image_boxes: dict[tuple, Box]
  text_boxes: dict[tuple, Box]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
  # Pillow (>= 10.1) bundles a scalable font, so the sheet looks the same on
  # every machine without depending on system fonts.
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Older Pillow: a fixed bitmap font.
    return ImageFont.load_default()


def _text_width(text: str, font) -> int:
  left, _, right, _ = font.getbbox(text)
  return right - left


def _line_height(font) -> int:
  _, top, _, bottom = font.getbbox('Hg…')
  return bottom + max(2, (bottom - top) // 4)


def _wrap(text: str, font, width: int) -> list[str]:
  """Greedy wrap into lines no wider than `width`, preferring _BREAK_AFTER."""
  lines, rest = [], text
  while rest:
    if _text_width(rest, font) <= width:
      lines.append(rest)
      break
    # Longest prefix that fits (at least one character, so this ends).
    n = 1
    while n < len(rest) and _text_width(rest[:n + 1], font) <= width:
      n += 1
    cut = max((rest.rfind(c, 0, n) + 1 for c in _BREAK_AFTER), default=0)
    if cut <= n // 2:  # A break this early wastes the line; cut mid-word.
      cut = n
    lines.append(rest[:cut].rstrip())
    rest = rest[cut:].lstrip()
  return lines


def shorten_middle(text: str, keep: int) -> str:
  """``text`` with its middle replaced by '…' so that ``keep`` characters remain.

  Both ends stay: "woman-with-hat-matisse+starry_night_g" with keep=19 is
  "woman-with-h…night_g" (the start names the first style, the end the last).
  """
  if len(text) <= keep:
    return text
  head = (keep + 1) // 2
  tail = keep - head
  return text[:head] + ELLIPSIS + (text[len(text) - tail:] if tail else '')


def fit_text(text: str, font, width: int, max_lines: int) -> list[str]:
  """Wraps ``text`` into at most ``max_lines`` lines of at most ``width`` px.

  Text that does not fit keeps its first ``max_lines - 1`` lines as wrapped;
  the last line holds the rest, shortened in the middle (`shorten_middle`) as
  little as needed, so both the start and the end of a long name show.

  Args:
    text: the label; newlines are treated as spaces.
    font: a Pillow font.
    width: the widest a line may be, in pixels.
    max_lines: at least 1.
  Returns:
    The lines to draw (empty for empty text).
  """
  text = ' '.join(str(text).split())
  if not text:
    return []
  lines = _wrap(text, font, width)
  if len(lines) <= max_lines:
    return lines
  # The first lines as wrapped; the last holds the rest, shortened in the
  # middle, so that both the start and the end of the name stay readable.
  head, pos = lines[:max_lines - 1], 0
  for line in head:
    pos = text.index(line, pos) + len(line)
  rest = text[pos:].strip()
  lo, hi = 0, len(rest) - 1  # Largest `keep` whose shortened rest fits on one line.
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if _text_width(shorten_middle(rest, mid), font) <= width:
      lo = mid
    else:
      hi = mid - 1
  return head + [shorten_middle(rest, lo)]


def _to_pil(image: np.ndarray, fit: int | None) -> Image.Image:
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected images of shape [H, W, 3], got {image.shape}')
  if fit is not None and max(image.shape[:2]) != fit:
    image = image_io.resize_longest(image, fit)
  return Image.fromarray(np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def _draw_lines(draw, lines: Sequence[str], box: Box, font, fill, centre: bool,
                bottom: bool = False) -> Box | None:
  """Draws lines in ``box``: centred or left-aligned, from its top or ending at its bottom.

  Returns the bounding box of the ink, or None for no lines.
  """
  if not lines:
    return None
  left, top, right, box_bottom = box
  step = _line_height(font)
  if bottom:  # A title sits just above its image, however many lines it has.
    top = max(top, box_bottom - len(lines) * step)
  boxes = []
  for k, line in enumerate(lines):
    x = left + (right - left - _text_width(line, font)) // 2 if centre else left
    x -= font.getbbox(line)[0]
    boxes.append(draw.textbbox((x, top + k * step), line, font=font))
    draw.text((x, top + k * step), line, font=font, fill=fill)
  return (min(b[0] for b in boxes), min(b[1] for b in boxes),
          max(b[2] for b in boxes), max(b[3] for b in boxes))


def _failure_text(cell: str) -> str:
  text = ' '.join(cell.split())
  return text if text.lower().startswith('failed') else f'failed: {text}'


def _check_labels(labels: Sequence[str], n: int, name: str) -> list[str]:
  labels = list(labels or ())
  if len(labels) > n:
    raise ValueError(f'{name} has {len(labels)} entries for {n} images')
  return labels + [''] * (n - len(labels))


def _draw_entry(canvas: Image.Image, draw, entry: Image.Image | str | None, box: Box,
                failure_font, min_lines: int) -> tuple[Box | None, Box | None]:
  """Draws one image slot: an image hung centred from the top, a failure message, or nothing.

  Args:
    canvas: the sheet being drawn.
    draw: its ImageDraw.
    entry: a resized image, a failure reason, or None.
    box: the slot (left, top, right, bottom).
    failure_font: the font of failure messages.
    min_lines: the fewest lines a failure message may take, however short the slot.
  Returns:
    ``(image_box, failure_box)``: where the image was pasted and the ink of
    the failure message, each None (or empty) where nothing of its kind was drawn.
  """
  left, top, right, bottom = box
  if isinstance(entry, str):
    lines = fit_text(_failure_text(entry), failure_font, right - left - 4,
                     max(min_lines, (bottom - top - 4) // _line_height(failure_font)))
    return None, _draw_lines(draw, lines, (left + 2, top + 2, right - 2, bottom),
                             failure_font, FAILED, centre=False)
  if entry is None:
    return None, None
  x = left + (right - left - entry.size[0]) // 2
  canvas.paste(entry, (x, top))
  return (x, top, x + entry.size[0], top + entry.size[1]), None


def _grid_table(row_images: Sequence[Cell], column_images: Sequence[Cell],
                cells: Sequence[Sequence[Cell]], cell_size: int) -> list[list]:
  """The grid as rows of entries, images resized; [0][0] is the empty corner.

  Row 0 is the header row (the column images), column 0 the header column
  (the row images).
  """
  table = [[None] + list(column_images)] + [[row_images[i]] + list(cells[i])
                                            for i in range(len(row_images))]
  return [[_to_pil(e, cell_size) if isinstance(e, np.ndarray) else e for e in row]
          for row in table]


def _track_sizes(table: Sequence[Sequence], cell_size: int) -> tuple[list[int], list[int]]:
  """Column widths and row heights: the widest / tallest image in each, else ``cell_size``.

  Landscape photos then leave no square gaps; a row or column of failures
  only gets a full square.
  """
  widths = [max([row[c].size[0] for row in table if isinstance(row[c], Image.Image)]
                or [cell_size]) for c in range(len(table[0]))]
  heights = [max([e.size[1] for e in row if isinstance(e, Image.Image)] or [cell_size])
             for row in table]
  return widths, heights


def _grid_titles(row_labels: Sequence[str], column_labels: Sequence[str],
                 widths: Sequence[int], font, title_lines: int) -> dict[tuple, list[str]]:
  """Fitted title lines keyed by table position: (0, c) for columns, (r, 0) for rows."""
  titles = {(0, c): fit_text(t, font, widths[c], title_lines)
            for c, t in enumerate(column_labels, start=1)}
  titles.update({(r, 0): fit_text(t, font, widths[0], title_lines)
                 for r, t in enumerate(row_labels, start=1)})
  return titles


def _grid_key(r: int, c: int) -> tuple:
  """The `Sheet` key of table position (r, c): ('column', j), ('row', i) or ('cell', i, j)."""
  return ('column', c - 1) if r == 0 else ('row', r - 1) if c == 0 else ('cell', r - 1, c - 1)


def grid(row_images: Sequence[Cell], column_images: Sequence[Cell],
         cells: Sequence[Sequence[Cell]], *, row_labels: Sequence[str] = (),
         column_labels: Sequence[str] = (), cell_size: int = 192, font_size: int = 13,
         title_lines: int = 2, padding: int = 6) -> Sheet:
  """A labelled content x style grid.

  The top-left corner is empty; the first row shows the column images
  (styles), the first column the row images (contents), and cell (i, j) the
  result for row i and column j. Each image is resized to ``cell_size`` on
  its longest side; each column is as wide as its widest image and each row
  as tall as its tallest (a full ``cell_size`` where it has none), and
  images hang centred below their title band. Every row has a
  title band above its images: in the header row it holds the column
  labels, in the other rows the row label (above the row's header image).
  A cell (or header) given as a string is drawn as a readable failure
  message in red, "failed: <the string>" unless it already starts with
  "failed", wrapped to the cell and shortened in the middle if it is long.
  None leaves the cell blank (e.g. not run).

  Args:
    row_images: N images [H, W, 3] in [0, 1] (or failure strings / None).
    column_images: M images (or failure strings / None).
    cells: N rows of M entries each.
    row_labels: up to N titles (missing ones are empty).
    column_labels: up to M titles.
    cell_size: side of each image square, px.
    font_size: title font size, px.
    title_lines: most lines a title may take before it is shortened.
    padding: space around each square, px.
  Returns:
    A `Sheet`; image boxes keyed ('column', j), ('row', i), ('cell', i, j).
  Raises:
    ValueError: `cells` is not N x M, or an image is not [H, W, 3].
  """
  n, m = len(row_images), len(column_images)
  if len(cells) != n or any(len(row) != m for row in cells):
    raise ValueError(f'cells must be {n} rows of {m} entries (one per row and column '
                     f'image), got {[len(row) for row in cells]}')
  row_labels = _check_labels(row_labels, n, 'row_labels')
  column_labels = _check_labels(column_labels, m, 'column_labels')
  table = _grid_table(row_images, column_images, cells, cell_size)
  widths, heights = _track_sizes(table, cell_size)
  font = _font(font_size)
  failure_font = _font(max(8, font_size - 1))
  titles = _grid_titles(row_labels, column_labels, widths, font, title_lines)
  # As tall as the longest title needs (one line at least, so rows align).
  band = max([len(v) for v in titles.values()] + [1]) * _line_height(font) + padding // 2
  xs = np.cumsum([padding] + [w + padding for w in widths]).tolist()
  ys = np.cumsum([padding] + [band + h + padding for h in heights]).tolist()
  canvas = Image.new('RGB', (xs[-1], ys[-1]), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  image_boxes, text_boxes = {}, {}
  for r, row in enumerate(table):
    for c, entry in enumerate(row):
      if r == 0 and c == 0:
        continue
      key = _grid_key(r, c)
      x0, y0, w, h = xs[c], ys[r], widths[c], heights[r]
      if titles.get((r, c)):
        box = _draw_lines(draw, titles[(r, c)], (x0, y0, x0 + w, y0 + band), font, TEXT,
                          centre=True, bottom=True)
        if box:
          text_boxes[key] = box
      top = y0 + band  # Images hang from their title band, centred across.
      image_box, failure_box = _draw_entry(canvas, draw, entry, (x0, top, x0 + w, top + h),
                                           failure_font, min_lines=2)
      if image_box:
        image_boxes[key] = image_box
      if failure_box:
        text_boxes[(*key, 'failure')] = failure_box
  return Sheet(np.asarray(canvas, np.float32) / 255.0, image_boxes, text_boxes)


def tiles(images: Sequence[Cell], titles: Sequence[str] = (), *, columns: int = 7,
          tile_size: int | None = 256, font_size: int = 14, title_lines: int = 2,
          padding: int = 6) -> Sheet:
  """N titled images in ``columns`` columns, row by row.

  Each tile is a title band (centred text, wrapped, shortened in the middle
  if needed) above a box as large as the largest image; each image hangs
  centred below its title. A string entry is drawn as a failure message, None as an
  empty tile.

  Args:
    images: images [H, W, 3] in [0, 1] (or failure strings / None).
    titles: up to N titles.
    columns: tiles per row (fewer if there are fewer images).
    tile_size: longest side each image is resized to; None keeps the images'
      own sizes (their pixels then appear on the sheet unchanged, up to 8-bit
      rounding).
    font_size: title font size, px.
    title_lines: most lines a title may take before it is shortened.
    padding: space around each tile, px.
  Returns:
    A `Sheet` with image boxes and title boxes keyed ('tile', k).
  Raises:
    ValueError: bad ``columns`` or ``tile_size``, too many titles, or an image
      that is not [H, W, 3].
  """
  if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
    raise ValueError(f'columns must be a positive integer, got {columns!r}')
  if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int)
                                or tile_size < 1):
    raise ValueError(f'tile_size must be a positive integer or None, got {tile_size!r}')
  titles = _check_labels(titles, len(images), 'titles')
  pictures = [_to_pil(x, tile_size) if isinstance(x, np.ndarray) else x for x in images]
  sizes = [p.size for p in pictures if isinstance(p, Image.Image)]
  default = tile_size or 128
  box_w = max([w for w, _ in sizes] or [default])
  box_h = max([h for _, h in sizes] or [default])
  font = _font(font_size)
  fitted = [fit_text(t, font, box_w, title_lines) for t in titles]
  band = max([len(lines) for lines in fitted] + [1]) * _line_height(font) + padding // 2
  columns = max(1, min(columns, len(images)))
  rows = -(-len(images) // columns)
  col_step, row_step = box_w + padding, band + box_h + padding
  canvas = Image.new('RGB', (columns * col_step + padding, rows * row_step + padding),
                     BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  image_boxes, text_boxes = {}, {}
  for k, (picture, lines) in enumerate(zip(pictures, fitted)):
    r, c = divmod(k, columns)
    x0, y0 = padding + c * col_step, padding + r * row_step
    box = _draw_lines(draw, lines, (x0, y0, x0 + box_w, y0 + band), font, TEXT, centre=True,
                      bottom=True)
    if box:
      text_boxes[('tile', k)] = box
    image_box, failure_box = _draw_entry(
        canvas, draw, picture, (x0, y0 + band, x0 + box_w, y0 + band + box_h),
        _font(max(8, font_size - 1)), min_lines=1)
    if image_box:
      image_boxes[('tile', k)] = image_box
    if failure_box:
      text_boxes[('tile', k, 'failure')] = failure_box
  return Sheet(np.asarray(canvas, np.float32) / 255.0, image_boxes, text_boxes)
