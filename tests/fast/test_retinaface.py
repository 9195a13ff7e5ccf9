"""RetinaFace-R50: parity with the official detector, strict loading of both namings, NMS, priors."""

import pytest
import torch

from flashface.errors import ModelFileError
from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.retinaface import (
    FACEXLIB_HEAD_NAMES,
    MIN_SIZES,
    MODEL_NAME,
    STRIDES,
    load_face_detector,
    nms,
    normalize,
    prior_boxes,
)
from parity import ManifestCheckpoint, cases, load_fixture_module, manifest
from seeded_weights import save_state_dict
from tiny_retinaface import retinaface_state_dict, write_retinaface
from tiny_unet import write_tiny_unet

MANIFEST = "retinaface_resnet50.json"


def facexlib_naming(state: dict, prefix: str = "module.") -> dict:
    """Official keys -> facexlib's (`ClassHead`... heads), by default as saved from DataParallel."""
    renamed = {}
    for key, tensor in state.items():
        for facexlib_name, official_name in FACEXLIB_HEAD_NAMES.items():
            if key.startswith(official_name):
                key = facexlib_name + key[len(official_name) :]
        renamed[prefix + key] = tensor
    return renamed


@pytest.mark.parametrize("case", cases("retinaface"))
def test_parity_with_official_retinaface(tmp_path, case):
    config = case.config
    state = load_fixture_module(case.path / "recipe.py").state_dict_from_manifest(
        manifest(MANIFEST), config["recipe_seed"], config["recipe_weight_scale"]
    )
    detector = load_face_detector(save_state_dict(state, tmp_path / "retinaface_resnet50.pth"))
    image = case.inputs["input_640"]
    expected = case.expected
    with torch.no_grad():
        raw = dict(zip(("raw_scores", "raw_boxes", "raw_landmarks"), detector(normalize(image))))
    for name, value in raw.items():
        torch.testing.assert_close(value, expected[name], atol=case.atol, rtol=case.rtol, msg=name)
    (detections,) = detector.detect(image, config["min_thr"])
    assert detections.boxes.shape == expected["boxes"].shape
    torch.testing.assert_close(detections.boxes, expected["boxes"], atol=case.atol, rtol=case.rtol)
    torch.testing.assert_close(detections.landmarks, expected["landmarks"], atol=case.atol, rtol=case.rtol)


@pytest.mark.parametrize("case", cases("retinaface"))
def test_pad_to_square_reproduces_the_detector_input(case):
    from PIL import Image

    from flashface.face import DETECTOR_SIZE, image_to_tensor, pad_to_square

    if case.config["image"] != "skimage.data.astronaut()":
        pytest.skip(f"the case's photo is {case.config['image']}, which this test cannot rebuild")
    skimage_data = pytest.importorskip(
        "skimage.data", reason="scikit-image (tests/requirements.txt) ships the case's photo"
    )
    photo = Image.fromarray(skimage_data.astronaut())
    rebuilt = image_to_tensor(pad_to_square(photo, DETECTOR_SIZE))[None]
    torch.testing.assert_close(rebuilt, case.inputs["input_640"], atol=0, rtol=0)


def manifest_state() -> dict:
    checkpoint = ManifestCheckpoint(manifest(MANIFEST))
    return {key: checkpoint.tensor(key) for key in checkpoint.keys()}


def test_loader_accepts_exactly_the_published_key_set_and_shapes():
    state = manifest_state()
    detector = load_face_detector(StateDictCheckpoint(state, path=MANIFEST), device="meta")
    loaded = detector.state_dict()
    assert set(loaded) == set(state)
    assert {k: tuple(t.shape) for k, t in loaded.items()} == {k: tuple(t.shape) for k, t in state.items()}
    # facexlib's naming of the same file, and an export without BatchNorm's training counters
    for prefix in ("", "module."):
        load_face_detector(StateDictCheckpoint(facexlib_naming(state, prefix)), device="meta")
    load_face_detector(
        StateDictCheckpoint({k: t for k, t in state.items() if not k.endswith("num_batches_tracked")}), device="meta"
    )


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_an_altered_key_set_is_refused(change):
    state = manifest_state()
    if change == "missing":
        del state["ssh2.conv7x7_3.1.running_var"]
    elif change == "unexpected":
        state["body.fc.weight"] = torch.empty(1000, 2048, device="meta")
    else:
        state["class_head.1.conv1x1.weight"] = torch.empty(6, 256, 1, 1, device="meta")
    with pytest.raises(ModelFileError, match="RetinaFace"):
        load_face_detector(StateDictCheckpoint(state), device="meta")


def test_a_different_model_file_is_refused_naming_the_detector(tmp_path):
    path = write_tiny_unet(tmp_path / "flashface.safetensors")
    with pytest.raises(ModelFileError) as error:
        load_face_detector(path)
    assert MODEL_NAME in str(error.value) and str(path) in str(error.value)


def test_facexlib_and_safetensors_files_load_the_same_detector(tmp_path):
    state = retinaface_state_dict(seed=3)
    native = load_face_detector(save_state_dict(state, tmp_path / "retinaface_resnet50.pth"))
    facexlib = load_face_detector(save_state_dict(facexlib_naming(state), tmp_path / "detection_Resnet50_Final.pth"))
    safetensors = load_face_detector(write_retinaface(tmp_path / "retinaface.safetensors", seed=3))
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = native(normalize(image))
        for other in (facexlib, safetensors):
            for expected, actual in zip(reference, other(normalize(image))):
                assert torch.equal(expected, actual)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_detector_is_close_to_fp32(tmp_path, dtype):
    path = write_retinaface(tmp_path / "retinaface.safetensors", seed=1)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = load_face_detector(path)(normalize(image))
        low = load_face_detector(path, dtype=dtype)
        assert next(low.parameters()).dtype == dtype
        outputs = low(normalize(image).to(dtype))
    for expected, actual in zip(reference, outputs):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected, atol=0.1, rtol=0.05)


def test_prior_boxes_for_the_actual_input_size():
    assert prior_boxes(640, 640).shape == (16800, 4)
    height, width = 200, 300
    priors = prior_boxes(height, width)
    counts = [-(-height // s) * -(-width // s) * len(sizes) for s, sizes in zip(STRIDES, MIN_SIZES)]
    assert priors.shape == (sum(counts), 4)
    # first prior: first cell of the finest level, smallest anchor; the next one the second anchor
    stride, sizes = STRIDES[0], MIN_SIZES[0]
    first = torch.tensor([0.5 * stride / width, 0.5 * stride / height, sizes[0] / width, sizes[0] / height])
    torch.testing.assert_close(priors[0], first)
    torch.testing.assert_close(priors[1, 2:], torch.tensor([sizes[1] / width, sizes[1] / height]))
    # the third prior is the next column of the same row
    torch.testing.assert_close(priors[2, :2], torch.tensor([1.5 * stride / width, 0.5 * stride / height]))
    # the last prior: last cell of the coarsest grid (which may reach past the image), largest anchor
    stride, size = STRIDES[-1], MIN_SIZES[-1][-1]
    rows, cols = -(-height // stride), -(-width // stride)
    last = torch.tensor([(cols - 0.5) * stride / width, (rows - 0.5) * stride / height, size / width, size / height])
    torch.testing.assert_close(priors[-1], last)


def test_detect_runs_at_any_input_size(tmp_path_factory):
    from tiny_retinaface import session_detector

    detector = session_detector(tmp_path_factory)
    (detections,) = detector.detect(torch.rand(1, 3, 72, 104, generator=torch.Generator().manual_seed(2)), 0.0)
    assert detections.boxes.shape[1] == 5 and detections.landmarks.shape[1:] == (5, 2)
    assert 0 < len(detections.boxes) <= 750
    assert torch.all(detections.boxes[:-1, 4] >= detections.boxes[1:, 4])


def test_nms_uses_inclusive_pixel_areas():
    # IoU of the second box with the first: 6*10 / (200-60) = 0.43 counting pixels inclusively
    # (suppressed), 5*9 / (162-45) = 0.38 with plain areas.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [4.0, 0.0, 13.0, 9.0], [30.0, 30.0, 40.0, 40.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.4)
    assert keep.tolist() == [0, 2]


def test_nms_keeps_overlap_at_the_threshold_and_orders_by_score():
    # inclusive areas: 100 and 250, intersection 100 -> IoU exactly 0.4 (kept); the third box
    # overlaps the best one more (0.5) and goes
    boxes = torch.tensor([[0.0, 0.0, 9.0, 24.0], [0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 19.0]])
    keep = nms(boxes, torch.tensor([0.2, 0.9, 0.5]), 0.4)
    assert keep.tolist() == [1, 0]
    assert nms(torch.empty(0, 4), torch.empty(0), 0.4).numel() == 0
