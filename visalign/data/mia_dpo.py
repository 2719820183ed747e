"""MIA-DPO's three multi-image augmentations of single-image data (Liu et al. 2024, "MIA-DPO", §3.2; reference §B.2).

Each takes the sample's own image, distractor images (unrelated images of the same source set, never the sample's
own) and its question, and returns the augmented images, the rewritten question and where the true image is:

- ``sequence_sample``: the images as a list, the true one at 1-based position ``k``; the question becomes
  ``"Image1:<image>\\nImage2:<image>\\n...ImageN:<image>\\nIn Image{k}, " + question`` (MIA-DPO ``mix_data``);
- ``grid_collage``: 2, 3, 4, 6 or 9 images in one picture (1×2, 1×3, 2×2, 2×3, 3×3). Each is resized (aspect kept,
  LANCZOS) into a ``cell``×``cell`` white square (448), placed top-left; cell ``(i, j)`` sits at
  ``x = j·(cell + margin)``, ``y = i·(cell + margin) + margin`` on a white canvas of
  ``cols·cell + (cols-1)·margin`` × ``rows·(cell + margin)`` (margin 40), with the black label ``"Image{n}"`` drawn at
  ``(x + 20, y - 40)`` (font size 36); the question gets the same ``"In Image{k}, "`` prefix;
- ``picture_in_picture``: the true image scaled to fit 70% of the host image's width and height (aspect kept) and
  pasted at the centre of the host; the question gets a "centre image" phrasing as prefix.

Where visalign differs from the released notebooks: only the first letter of the question is lower-cased (the
notebooks lower-case all of it, which mangles OCR answers and proper nouns); a leading ``<image>`` placeholder is
removed from the question; the label font is a TrueType file if given, else PIL's built-in font at size 36 (the
notebooks load ``Arial.ttf``); ``PIP_PREFIXES`` holds a dozen of the ~90 phrasings.

Square padding: MIA-DPO trained LLaVA-1.5 with ``image_aspect_ratio pad``, which centres every image on a square of
the image processor's mean colour (LLaVA's ``expand2square``) before the processor. LLaVA-1.5's HF image processor
instead resizes the short side and centre-crops, which would cut a 1×3 collage down to its middle cell and half of
the outer cells of 1×2 and 2×3 collages (and the sides of a wide picture-in-picture host).
``square_fill(processor)`` says whether a processor crops so (and with which colour to pad); ``pad_to_square`` pads
an augmentation's images and moves its cell boxes with them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw, ImageFont

IMAGE_PLACEHOLDER = "<image>"
#: number of images -> (rows, cols) of the collage.
GRID_LAYOUTS = {2: (1, 2), 3: (1, 3), 4: (2, 2), 6: (2, 3), 9: (3, 3)}
GRID_CELL = 448
GRID_MARGIN = 40
GRID_FONT_SIZE = 36
GRID_LABEL_OFFSET = (20, -40)
PIP_SCALE = 0.7
PIP_PREFIXES = (
    "For the image in the center",
    "Regarding the central subplot",
    "Looking at the picture in the middle",
    "For the small image in the center",
    "Focusing on the central image",
    "About the image placed in the middle",
    "In the central picture",
    "Considering the image in the center",
    "With respect to the middle subplot",
    "For the inset image in the center",
    "Regarding the picture in the middle",
    "As for the central image",
)


Box = tuple[int, int, int, int]


@dataclass
class Augmented:
    """One augmented sample: the images to feed the model, the rewritten question, the 1-based index of the true
    image among the cells or images (1 for picture-in-picture) and the augmentation's name; for a grid, its
    ``(rows, cols)`` ``layout`` and the ``(left, top, right, bottom)`` ``boxes`` of its cells in the image; for
    picture-in-picture, the inset's box."""

    images: list[Image.Image]
    question: str
    target: int
    kind: str
    layout: tuple[int, int] | None = None
    boxes: list[Box] = field(default_factory=list)


def refer(question: str, prefix: str) -> str:
    """``prefix + ", " + question`` with a leading ``<image>`` removed and the first letter lower-cased."""
    text = question.replace(IMAGE_PLACEHOLDER, "", 1).strip() if question.lstrip().startswith(IMAGE_PLACEHOLDER) \
        else question.strip()
    return f"{prefix}, {text[:1].lower()}{text[1:]}"


def _place(image: Image.Image, distractors: list[Image.Image], position: int) -> list[Image.Image]:
    total = len(distractors) + 1
    if not 1 <= position <= total:
        raise ValueError(f"position must be in 1..{total} for {total} images; got {position}")
    images = list(distractors)
    images.insert(position - 1, image)
    return images


def sequence_sample(image: Image.Image, distractors: list[Image.Image], question: str, position: int) -> Augmented:
    """The images in order with the true one at ``position`` (1-based), and the ``Image{k}``-referencing question."""
    images = _place(image, distractors, position)
    header = "".join(f"Image{i}:{IMAGE_PLACEHOLDER}\n" for i in range(1, len(images) + 1))
    return Augmented(images, header + refer(question, f"In Image{position}"), position, "sequence")


def fit_into(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` resized (LANCZOS) to the largest size with its aspect ratio that fits ``width``×``height``."""
    if image.width / image.height > width / height:
        size = (width, max(1, int(width * image.height / image.width)))
    else:
        size = (max(1, int(height * image.width / image.height)), height)
    return image.convert("RGB").resize(size, Image.LANCZOS)


def grid_cell_boxes(count: int, *, cell: int = GRID_CELL, margin: int = GRID_MARGIN) -> list[Box]:
    """``(left, top, right, bottom)`` of each cell of a ``count``-image collage, row-major (module docstring)."""
    if count not in GRID_LAYOUTS:
        raise ValueError(f"a grid collage holds {sorted(GRID_LAYOUTS)} images; got {count}")
    rows, cols = GRID_LAYOUTS[count]
    boxes = []
    for i in range(rows):
        for j in range(cols):
            x, y = j * (cell + margin), i * (cell + margin) + margin
            boxes.append((x, y, x + cell, y + cell))
    return boxes


def grid_canvas_size(count: int, *, cell: int = GRID_CELL, margin: int = GRID_MARGIN) -> tuple[int, int]:
    """``(width, height)`` of a ``count``-image collage."""
    rows, cols = GRID_LAYOUTS[count]
    return cols * cell + (cols - 1) * margin, rows * (cell + margin)


def _font(font_path: str | None, size: int):
    return ImageFont.truetype(font_path, size) if font_path else ImageFont.load_default(size=size)


def grid_collage(
    image: Image.Image,
    distractors: list[Image.Image],
    question: str,
    position: int,
    *,
    cell: int = GRID_CELL,
    margin: int = GRID_MARGIN,
    font_path: str | None = None,
) -> Augmented:
    """One labelled collage of the true image (cell ``position``, 1-based) and the distractors."""
    images = _place(image, distractors, position)
    boxes = grid_cell_boxes(len(images), cell=cell, margin=margin)
    canvas = Image.new("RGB", grid_canvas_size(len(images), cell=cell, margin=margin), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_path, GRID_FONT_SIZE)
    for n, (img, (x, y, _, _)) in enumerate(zip(images, boxes), start=1):
        padded = Image.new("RGB", (cell, cell), (255, 255, 255))
        padded.paste(fit_into(img, cell, cell), (0, 0))
        canvas.paste(padded, (x, y))
        draw.text((x + GRID_LABEL_OFFSET[0], y + GRID_LABEL_OFFSET[1]), f"Image{n}", fill=(0, 0, 0), font=font)
    return Augmented([canvas], f"{IMAGE_PLACEHOLDER}\n" + refer(question, f"In Image{position}"), position, "grid",
                     layout=GRID_LAYOUTS[len(images)], boxes=boxes)


def pip_box(host_size: tuple[int, int], inset_size: tuple[int, int], scale: float = PIP_SCALE) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the inset: fit into ``scale``×host (aspect kept), centred."""
    host_w, host_h = host_size
    w, h = inset_size
    box_w, box_h = int(host_w * scale), int(host_h * scale)
    if w / h > box_w / box_h:
        size = (box_w, max(1, int(box_w * h / w)))
    else:
        size = (max(1, int(box_h * w / h)), box_h)
    left, top = (host_w - size[0]) // 2, (host_h - size[1]) // 2
    return left, top, left + size[0], top + size[1]


def picture_in_picture(
    image: Image.Image, host: Image.Image, question: str, *, rng: random.Random, scale: float = PIP_SCALE
) -> Augmented:
    """The true image inset at the centre of ``host`` at ``scale`` (0.7) of its size, with a "central image" prefix."""
    left, top, right, bottom = pip_box(host.size, image.size, scale)
    canvas = host.convert("RGB").copy()
    canvas.paste(image.convert("RGB").resize((right - left, bottom - top), Image.LANCZOS), (left, top))
    prefix = rng.choice(PIP_PREFIXES)
    return Augmented([canvas], f"{IMAGE_PLACEHOLDER}\n" + refer(question, prefix), 1, "pip",
                     boxes=[(left, top, right, bottom)])


def square_fill(processor) -> tuple[int, int, int] | None:
    """The colour to pad images to a square with (the image processor's mean, 0..255, as LLaVA's ``expand2square``)
    when ``processor`` would centre-crop them (LLaVA-1.5's ``CLIPImageProcessor``); ``None`` when it keeps the whole
    image (any-resolution tiling such as LLaVA-NeXT's, Qwen2-VL's dynamic resolution)."""
    image_processor = getattr(processor, "image_processor", processor)
    if not getattr(image_processor, "do_center_crop", False) or getattr(image_processor, "image_grid_pinpoints", None):
        return None
    return tuple(int(m * 255) for m in image_processor.image_mean)


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """LLaVA's ``expand2square``: ``image`` centred on a ``fill``-coloured square of its longer side; returns the
    square and the ``(dx, dy)`` offset of the image in it."""
    width, height = image.size
    if width == height:
        return image, (0, 0)
    side = max(width, height)
    offset = ((side - width) // 2, (side - height) // 2)
    square = Image.new("RGB", (side, side), fill)
    square.paste(image.convert("RGB"), offset)
    return square, offset


def pad_to_square(aug: Augmented, fill: tuple[int, int, int]) -> Augmented:
    """``aug`` with every image expanded to a square (``expand_to_square``) and its boxes moved with the image."""
    squares = [expand_to_square(image, fill) for image in aug.images]
    boxes = aug.boxes
    if boxes:
        dx, dy = squares[0][1]
        boxes = [(left + dx, top + dy, right + dx, bottom + dy) for left, top, right, bottom in boxes]
    return replace(aug, images=[square for square, _ in squares], boxes=boxes)


def choose_distractors(pool_size: int, own: int, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct indices of ``range(pool_size)`` other than ``own`` (MIA-DPO's ``find_companions``)."""
    candidates = [i for i in range(pool_size) if i != own]
    if count > len(candidates):
        raise ValueError(f"need {count} distractor images but the pool has only {len(candidates)} other images")
    return rng.sample(candidates, count)
