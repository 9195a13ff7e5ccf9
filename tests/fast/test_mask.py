"""Face-position mask: the official square from a box, user masks, size validation."""

import pytest
import torch

from flashface.errors import InvalidInputError
from flashface.sampling.mask import box_mask, latent_size, resize_mask


def drawn_and_subsampled(box, width, height):
    """The official procedure spelled out: draw the square in an H×W image, keep every 8th pixel."""
    x1, y1, x2, y2 = int(box[0] * width), int(box[1] * height), int(box[2] * width), int(box[3] * height)
    side = max(x2 - x1, y2 - y1)
    image = torch.zeros(height, width)
    image[y1 : y1 + side, x1 : x1 + side] = 1
    return image[::8, ::8]


def cells(mask):
    rows, columns = mask.nonzero(as_tuple=True)
    return (int(rows.min()), int(rows.max())), (int(columns.min()), int(columns.max()))


@pytest.mark.parametrize(
    "box",
    [
        (0.3, 0.1, 0.6, 0.4),
        (0.3, 0.2, 0.6, 0.5),
        (0.1, 0.5, 0.2, 0.95),
        (0.7, 0.7, 1.0, 1.0),
        (0.0, 0.0, 1.0, 0.3),
        (0.55, 0.05, 0.6, 0.9),
    ],
)
@pytest.mark.parametrize("size", [(512, 512), (768, 768), (640, 384), (200, 96)])
def test_box_mask_is_the_official_square(box, size):
    width, height = size
    assert torch.equal(box_mask(box, width, height), drawn_and_subsampled(box, width, height))


@pytest.mark.parametrize(
    "size, rows, columns",
    [
        (768, (10, 38), (29, 57)),
        (512, (7, 25), (20, 38)),
    ],
)
def test_reference_doc_examples(size, rows, columns):
    mask = box_mask((0.3, 0.1, 0.6, 0.4), size, size)
    assert mask.shape == (size // 8, size // 8)
    assert cells(mask) == (rows, columns)
    assert int(mask.sum()) == (rows[1] - rows[0] + 1) * (columns[1] - columns[0] + 1)


def test_square_uses_x2_minus_x1_not_the_ports_x2_minus_y1():
    # side 230 px at 768 (official), not 307 (x2 − y1, the ports' bug)
    mask = box_mask((0.3, 0.2, 0.6, 0.4), 768, 768)
    (top, bottom), (left, right) = cells(mask)
    assert right - left + 1 == 29 and bottom - top + 1 in (28, 29)  # 230 px = 28.75 cells


def test_zero_box_means_no_position_hint():
    assert not box_mask((0, 0, 0, 0), 512, 768).any()
    assert box_mask((0, 0, 0, 0), 512, 768).shape == (96, 64)


@pytest.mark.parametrize(
    "width, height, named", [(500, 512, "496 or 504"), (512, 770, "768 or 776"), (4, 512, "8"), (512, 0, "8")]
)
def test_sizes_must_be_multiples_of_8(width, height, named):
    with pytest.raises(InvalidInputError, match=named):
        latent_size(width, height)
    with pytest.raises(InvalidInputError):
        box_mask((0.3, 0.1, 0.6, 0.4), width, height)


@pytest.mark.parametrize("box", [(0.6, 0.1, 0.3, 0.4), (0.3, 0.1, 1.2, 0.4), (0.3, 0.1, 0.6)])
def test_bad_boxes_are_rejected(box):
    with pytest.raises(InvalidInputError):
        box_mask(box, 512, 512)


def test_user_mask_at_output_size_is_the_stride_8_subsample():
    generator = torch.Generator().manual_seed(0)
    user = (torch.rand(384, 640, generator=generator) > 0.5).float()
    assert torch.equal(resize_mask(user, 640, 384), user[::8, ::8])
    assert torch.equal(resize_mask(user[None], 640, 384), user[::8, ::8])


def test_user_mask_of_another_size_is_resampled_and_binarized():
    user = torch.zeros(100, 100)
    user[25:75, 50:100] = 0.8  # right half of the middle rows, soft values
    mask = resize_mask(user, 512, 256)
    assert mask.shape == (32, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert cells(mask) == ((8, 23), (32, 63))
    with pytest.raises(InvalidInputError):
        resize_mask(torch.zeros(2, 8, 8), 512, 512)


@pytest.mark.parametrize("box", [(0.5, 0.5, 0.5, 0.5), (1.0, 1.0, 1.0, 1.0), (0.999, 0.2, 1.0, 0.3)])
def test_a_box_that_covers_no_latent_cell_is_refused(box):
    with pytest.raises(InvalidInputError, match="covers no part of a 64x64 image"):
        box_mask(box, 64, 64)
    assert not box_mask((0, 0, 0, 0), 64, 64).any()  # all zeros: no hint, as documented


@pytest.mark.parametrize(
    "mask, phrase",
    [
        (torch.zeros(64, 64), "marks no face area"),
        (torch.full((64, 64), 0.4), "marks no face area"),
        (torch.full((64, 64), float("nan")), "not numbers"),
    ],
)
def test_an_empty_or_broken_mask_is_refused(mask, phrase):
    with pytest.raises(InvalidInputError, match=phrase):
        resize_mask(mask, 64, 64)


def test_a_mask_at_a_picture_size_that_is_no_multiple_of_8_keeps_its_pixels():
    """A mask made at a 207x203 picture's size for its 200x200 encoding loses its last rows and
    columns as the picture does (FlashFace VAE Encode keeps the top-left corner): not stretched."""
    mask = (torch.rand(203, 207, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    assert torch.equal(resize_mask(mask, 200, 200), resize_mask(mask[:200, :200], 200, 200))
    stretched = torch.nn.functional.interpolate(mask[None, None], size=(25, 25), mode="nearest")[0, 0]
    assert not torch.equal(resize_mask(mask, 200, 200), (stretched >= 0.5).float())
    assert resize_mask(mask, 192, 192).shape == (24, 24)  # 8 or more pixels larger: resampled as before
