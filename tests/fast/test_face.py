"""Face preprocessing: the official crop (parity), PadToSquare, detection mapped to photo pixels."""

import numpy as np
import pytest
import torch
from PIL import Image

from flashface.errors import FaceDetectionError, GenerationCancelled, InvalidInputError
from flashface.face import (
    DETECTOR_SIZE,
    MIN_PHOTO_SIDE,
    Face,
    PhotoFaces,
    crop_face,
    detect_faces,
    eye_levelling_angle,
    face_region_mask,
    find_reference_faces,
    image_to_tensor,
    largest_face,
    pad_to_square,
    prepare_reference,
)
from flashface.people import MAX_REFERENCES
from parity import cases
from tiny_retinaface import post_nms_scores, session_detector, threshold_for_count


def face_from_case(config) -> Face:
    *box, score = config["box"]
    return Face(box=tuple(box), score=score, landmarks=tuple(map(tuple, config["landmarks"])))


def assert_pixels_match(image: Image.Image, expected: np.ndarray, max_abs: int):
    actual = np.asarray(image)
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.int16) - expected.astype(np.int16)).max() <= max_abs


@pytest.mark.parametrize("case", cases("face_crop"))
def test_parity_with_official_face_crop(case):
    max_abs = case.config["tolerance"]["max_abs_uint8"]
    photo = Image.open(case.path / "photo.png")
    assert np.array_equal(np.asarray(photo), case.inputs["photo"].numpy())
    crop = crop_face(photo, face_from_case(case.config))
    square = pad_to_square(crop, 224)
    for image, name in ((crop, "crop"), (square, "crop_224")):
        assert_pixels_match(image, np.asarray(Image.open(case.path / f"{name}.png")), max_abs)
        assert_pixels_match(image, case.expected[name].numpy(), max_abs)


@pytest.mark.parametrize(
    "width, height, left, top, right, bottom",
    [
        (100, 45, 0, 17, 0, 18),  # scaled to 64x29: 35 rows of padding, the odd one at the bottom
        (45, 100, 17, 0, 18, 0),
        (30, 30, 0, 0, 0, 0),
    ],
)
def test_pad_to_square_centres_on_black(width, height, left, top, right, bottom):
    square = np.asarray(pad_to_square(Image.new("RGB", (width, height), (255, 255, 255)), 64))
    assert square.shape == (64, 64, 3)
    content = square[top : 64 - bottom, left : 64 - right]
    assert content.min() > 0
    assert square.sum() == content.sum()  # black everywhere else


def test_pad_to_square_resizes_with_pillow_bicubic():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    expected = np.asarray(photo.resize((224, 140), Image.Resampling.BICUBIC))
    assert np.array_equal(np.asarray(pad_to_square(photo, 224))[42:182], expected)


def test_prepare_reference_is_the_224_square_in_minus_one_to_one():
    crop = Image.new("RGB", (50, 100), (255, 0, 255))
    reference = prepare_reference(crop)
    assert reference.shape == (3, 224, 224) and reference.dtype == torch.float32
    assert reference[:, :, :56].eq(-1).all()  # black padding left
    assert reference[:, 112, 112].tolist() == [1.0, -1.0, 1.0]


def test_crop_outside_the_image_is_black_and_as_large_as_the_box():
    photo = Image.new("RGB", (40, 30), (200, 100, 50))
    face = Face(
        box=(-10.4, 20.0, 29.6, 49.5),
        score=1.0,
        landmarks=((0.0, 30.0), (20.0, 30.0), (10.0, 35.0), (5.0, 40.0), (15.0, 40.0)),
    )
    crop = np.asarray(crop_face(photo, face))
    assert crop.shape == (30, 40, 3)  # rounded box: x -10..30, y 20..50
    assert crop[:10, 10:].min() == 50 and crop[10:].max() == 0 and crop[:, :10].max() == 0


@pytest.mark.parametrize(
    "left_eye, right_eye, angle",
    [
        ((10.0, 20.0), (30.0, 0.0), -45.0),  # right eye higher in the picture: turn clockwise
        ((10.0, 0.0), (30.0, 20.0), 45.0),
        ((10.0, 5.0), (30.0, 5.0), 0.0),
        ((10.0, 5.0), (10.0, 5.0), 0.0),  # coincident eyes: no rotation
    ],
)
def test_eye_levelling_angle(left_eye, right_eye, angle):
    face = Face(
        box=(0.0, 0.0, 1.0, 1.0), score=1.0, landmarks=(left_eye, right_eye, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
    )
    assert eye_levelling_angle(face) == pytest.approx(angle, abs=1e-4)


def test_crop_levels_the_eyes():
    canvas = np.zeros((101, 101, 3), dtype=np.uint8)
    eyes = ((30, 62), (70, 38))  # (x, y): the right eye 24 px higher
    for x, y in eyes:
        canvas[y - 1 : y + 2, x - 1 : x + 2] = 255
    face = Face(
        box=(0.0, 0.0, 101.0, 101.0),
        score=1.0,
        landmarks=tuple((float(x), float(y)) for x, y in eyes) + ((50.0, 60.0), (40.0, 80.0), (60.0, 80.0)),
    )
    crop = np.asarray(crop_face(Image.fromarray(canvas), face))[..., 0]
    halves = crop[:, :50], crop[:, 51:]
    rows = [np.nonzero(half)[0].mean() for half in halves]
    assert abs(rows[0] - rows[1]) <= 1


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return session_detector(tmp_path_factory)


def photo(width, height, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_detections_are_mapped_back_to_photo_pixels(detector):
    wide = photo(1280, 600)  # scale 0.5, resized to 640x300: 170 black rows above
    scale, top = DETECTOR_SIZE / 1280, (DETECTOR_SIZE - 300) // 2
    threshold = threshold_for_count(post_nms_scores(detector, wide), 3)
    faces = detect_faces(detector, wide, threshold, "cpu")
    (detections,) = detector.detect(image_to_tensor(pad_to_square(wide, DETECTOR_SIZE))[None], threshold)
    assert len(faces) == len(detections.boxes) == 3
    for face, box, points in zip(faces, detections.boxes, detections.landmarks):
        x1, y1, x2, y2 = face.box
        torch.testing.assert_close(torch.tensor([x1, y1 + top * 2, x2, y2 + top * 2]) * scale, box[:4])
        torch.testing.assert_close((torch.tensor(face.landmarks) + torch.tensor([0, top * 2])) * scale, points)
        assert face.score == pytest.approx(box[4].item())
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_detections_of_a_padded_photo_shift_by_the_padding(detector):
    strip = photo(640, 320, seed=1)
    canvas = Image.new("RGB", (640, 640))
    canvas.paste(strip, (0, 160))
    in_strip = detect_faces(detector, strip, 0.0, "cpu")[:5]
    in_canvas = detect_faces(detector, canvas, 0.0, "cpu")[:5]
    for a, b in zip(in_strip, in_canvas):
        assert a.box[0] == b.box[0] and a.box[1] + 160 == pytest.approx(b.box[1])
        assert a.landmarks[2][1] + 160 == pytest.approx(b.landmarks[2][1])


def test_threshold_helper_yields_the_wanted_face_count(detector):
    image = photo(300, 400, seed=2)
    scores = post_nms_scores(detector, image)
    for count in (0, 1, 2):
        assert len(detect_faces(detector, image, threshold_for_count(scores, count), "cpu")) == count


def test_the_face_region_mask_covers_each_kept_box_as_cropped_within_the_photo():
    photo = Image.new("RGB", (40, 30))
    eyes = ((0.0, 0.0),) * 5
    inside, over_the_edge = Face((4.6, 2.4, 10.4, 8.0), 1.0, eyes), Face((-10.4, 20.0, 29.6, 49.5), 1.0, eyes)
    mask = face_region_mask(PhotoFaces(photo, (inside, over_the_edge), ()))
    expected = torch.zeros(30, 40)
    expected[2:8, 5:10] = 1  # rounded as the crop is: x 5..10, y 2..8
    expected[20:30, 0:30] = 1  # x -10..30, y 20..50, clipped
    assert mask.dtype == torch.float32 and torch.equal(mask, expected)
    assert face_region_mask(PhotoFaces(photo, (), ())).sum() == 0


def test_largest_face():
    small = Face((0.0, 0.0, 10.0, 10.0), 0.9, ((0.0, 0.0),) * 5)
    large = Face((0.0, 0.0, 30.0, 20.0), 0.7, ((0.0, 0.0),) * 5)
    assert largest_face([small, large]) is large


# the face-crop policy every entry point uses ----------------------------------------------------------


def test_several_faces_policy_keeps_the_largest_stops_or_keeps_all(detector):
    image = photo(300, 400, seed=2)
    threshold = threshold_for_count(post_nms_scores(detector, image), 3)
    faces = detect_faces(detector, image, threshold, "cpu")
    (largest,) = find_reference_faces(detector, [image], threshold, "cpu", "largest")
    assert largest.faces == (largest_face(faces),) and len(largest.crops) == 1
    (every,) = find_reference_faces(detector, [image], threshold, "cpu", "all")
    assert every.faces == tuple(faces) and [c.size for c in every.crops] == [crop_face(image, f).size for f in faces]
    with pytest.raises(FaceDetectionError, match=r"3 faces found in photo 1 of 1 \(300x400\)"):
        find_reference_faces(detector, [image], threshold, "cpu", "error")
    with_face, without = sorted([image, photo(300, 400, seed=9)], key=lambda p: -post_nms_scores(detector, p)[0])
    between = (post_nms_scores(detector, with_face)[0] + post_nms_scores(detector, without)[0]) / 2
    with pytest.raises(FaceDetectionError, match="No face found in photo 2 of 2 .* lower the threshold"):
        find_reference_faces(detector, [with_face, without], between, "cpu")


@pytest.mark.parametrize("size", [(2, 4000), (1, 1), (MIN_PHOTO_SIDE - 1, 300)])
def test_a_photo_too_small_for_a_face_is_refused_by_name(detector, size):
    with pytest.raises(FaceDetectionError, match=rf"photo 2 of 2 \({size[0]}x{size[1]}\) is too small"):
        find_reference_faces(detector, [photo(64, 64), photo(*size)], 0.0, "cpu")


def test_more_faces_than_a_generation_takes_are_refused(detector):
    crowd = photo(300, 400, seed=2)
    scores = post_nms_scores(detector, crowd)
    (kept,) = find_reference_faces(detector, [crowd], threshold_for_count(scores, MAX_REFERENCES), "cpu", "all")
    assert len(kept.crops) == MAX_REFERENCES
    with pytest.raises(FaceDetectionError, match=rf"more than {MAX_REFERENCES} faces \({MAX_REFERENCES + 1} in "):
        find_reference_faces(detector, [crowd], threshold_for_count(scores, MAX_REFERENCES + 1), "cpu", "all")


def test_cancel_is_checked_before_every_photo(detector):
    asked = []

    def cancel_at_the_third():
        asked.append(len(asked))
        return len(asked) == 3

    with pytest.raises(GenerationCancelled, match="before photo 3 of 5"):
        find_reference_faces(
            detector, [photo(64, 64, seed=i) for i in range(5)], 0.0, "cpu", should_cancel=cancel_at_the_third
        )
    assert len(asked) == 3


@pytest.mark.parametrize("threshold", [float("nan"), 1.0, 0.995, -0.01, float("inf")])
def test_a_threshold_outside_the_range_is_refused(detector, threshold):
    """The range the Detect Face widget offers (`DETECTION_THRESHOLD_RANGE`) is the one the library takes."""
    with pytest.raises(InvalidInputError, match=r"from 0\.0 to 0\.99 \(official: 0\.6\)"):
        find_reference_faces(detector, [photo(64, 64)], threshold, "cpu")


def test_pad_to_square_never_makes_a_side_of_zero_pixels():
    assert pad_to_square(Image.new("RGB", (1, 2000)), 224).size == (224, 224)


# EXIF orientation: how a phone stores an upright portrait (the pixels as the sensor read them) -------
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="module")
def upright_photo_faces(detector):
    """An upright photo, a threshold that finds two faces in it, and what the policy keeps of it."""
    upright = photo(300, 400, seed=2)
    threshold = threshold_for_count(post_nms_scores(detector, upright), 2)
    (kept,) = find_reference_faces(detector, [upright], threshold, "cpu", "all")
    return upright, threshold, kept


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_a_photo_is_turned_upright_by_its_exif_orientation(detector, upright_photo_faces, orientation, tmp_path):
    """All eight EXIF orientations, read from a file as the command line reads it: the same faces and
    crops as the upright photo, pixel for pixel."""
    from flashface.__main__ import read_photo

    upright, threshold, expected = upright_photo_faces
    stored = upright if STORED_AS[orientation] is None else upright.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / f"phone_{orientation}.png"  # lossless, so the crops can match exactly
    stored.save(path, exif=exif)
    (found,) = find_reference_faces(detector, [read_photo(path)], threshold, "cpu", "all")
    assert np.asarray(found.photo).tobytes() == np.asarray(upright).tobytes()
    assert found.faces == expected.faces and len(found.faces) == 2
    assert [np.asarray(c).tobytes() for c in found.crops] == [np.asarray(c).tobytes() for c in expected.crops]
