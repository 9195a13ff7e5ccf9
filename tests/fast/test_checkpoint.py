"""The shared checkpoint reader and module loader (flashface/models/checkpoint.py)."""

import collections

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from flashface.errors import ModelFileError
from flashface.models.checkpoint import (
    StateDictCheckpoint,
    TensorPlan,
    load_module,
    open_checkpoint,
)
from parity import ManifestCheckpoint


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)


def two_layer_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "linear.weight": torch.randn(2, 3, generator=g),
        "linear.bias": torch.randn(2, generator=g),
        "norm.weight": torch.randn(2, generator=g),
        "norm.bias": torch.randn(2, generator=g),
    }


def copy_plan(keys):
    return {k: TensorPlan.copy(k) for k in keys}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".pth"])
def test_round_trip_every_format(tmp_path, suffix):
    weights = two_layer_weights()
    path = tmp_path / f"m{suffix}"
    if suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save(weights, path)
    checkpoint = open_checkpoint(path)
    assert sorted(checkpoint.keys()) == sorted(weights)
    assert checkpoint.shape("linear.weight") == (2, 3)
    module = load_module(TwoLayers, checkpoint, copy_plan(weights), what="test model")
    for name, value in module.state_dict().items():
        assert torch.equal(value, weights[name])
    assert not any(p.requires_grad for p in module.parameters())
    assert not module.training


def test_weights_take_the_dtype_and_norm_parameters_stay_fp32():
    weights = two_layer_weights()
    module = load_module(
        TwoLayers, StateDictCheckpoint(weights), copy_plan(weights), what="test model", dtype=torch.float16
    )
    assert module.linear.weight.dtype == torch.float16
    assert module.norm.weight.dtype == torch.float32
    assert torch.equal(module.linear.weight, weights["linear.weight"].half())


def test_legacy_pickle_without_zip_is_read(tmp_path):
    weights = two_layer_weights()
    path = tmp_path / "legacy.pth"
    torch.save(weights, path, _use_new_zipfile_serialization=False)
    assert torch.equal(open_checkpoint(path).tensor("linear.bias"), weights["linear.bias"])


def test_state_dict_wrapper_is_unwrapped(tmp_path):
    weights = two_layer_weights()
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": collections.OrderedDict(weights)}, path)
    assert sorted(open_checkpoint(path).keys()) == sorted(weights)


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        open_checkpoint(tmp_path / "absent.safetensors")


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(ModelFileError, match="unknown model file type"):
        open_checkpoint(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_reported_as_corrupt(tmp_path, suffix):
    weights = {"w": torch.randn(256, 256)}
    path = tmp_path / f"m{suffix}"
    if suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or incompletely downloaded"):
        open_checkpoint(path).tensor("w")


class NotATensor:
    pass


def test_pickle_with_code_objects_is_refused_without_advice_to_load_unsafely(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"w": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(ModelFileError, match="could run code") as refused:
        open_checkpoint(path)
    assert "NotATensor" in str(refused.value) and "weights_only" not in str(refused.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("detector.pth", b"<html><body>404 Not Found</body></html>\n"),  # a web page saved under a model's name
        ("unet.ckpt", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n"),  # a Git LFS pointer
        ("vae.safetensors", b"just some notes about my models\n"),
        ("clip.pth", bytes(range(200, 256)) * 4),  # binary, neither zip nor pickle
    ],
)
def test_a_file_that_is_no_model_at_all_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a model file") as refused:
        open_checkpoint(path)
    message = str(refused.value)
    assert "incompletely downloaded" not in message and "weights_only" not in message
    assert ("looks like text" in message) == (content[0] < 128)


def test_wrong_key_set_names_the_model():
    weights = two_layer_weights()
    weights["extra.weight"] = torch.zeros(1)
    del weights["norm.bias"]
    plan = copy_plan(["linear.weight", "linear.bias", "norm.weight", "norm.bias"])
    with pytest.raises(ModelFileError, match="not a test model checkpoint") as info:
        load_module(TwoLayers, StateDictCheckpoint(weights), plan, what="test model")
    assert "norm.bias" in str(info.value) and "extra.weight" in str(info.value)


def test_ignored_keys_are_allowed_but_never_read():
    weights = two_layer_weights()
    read = []

    class Recording(StateDictCheckpoint):
        def tensor(self, key):
            read.append(key)
            return super().tensor(key)

    checkpoint = Recording({**weights, "unused.weight": torch.zeros(5)})
    load_module(
        TwoLayers, checkpoint, copy_plan(weights), what="test model", ignore=lambda key: key.startswith("unused.")
    )
    assert "unused.weight" not in read


def test_wrong_shape_is_reported():
    weights = two_layer_weights()
    weights["linear.weight"] = torch.zeros(4, 3)
    with pytest.raises(ModelFileError, match=r"shape \(4, 3\)"):
        load_module(TwoLayers, StateDictCheckpoint(weights), copy_plan(weights), what="test model")


def test_aliases_must_be_equal():
    weights = two_layer_weights()
    weights["copy.linear.weight"] = weights["linear.weight"].clone()
    plan = copy_plan(weights)
    plan.pop("copy.linear.weight")
    plan["linear.weight"] = TensorPlan.aliased("copy.linear.weight", "linear.weight")
    module = load_module(TwoLayers, StateDictCheckpoint(weights), plan, what="test model")
    assert torch.equal(module.linear.weight, weights["linear.weight"])

    weights["copy.linear.weight"] += 1
    with pytest.raises(ModelFileError, match="should be identical"):
        load_module(TwoLayers, StateDictCheckpoint(weights), plan, what="test model")


def test_concat_plan():
    weights = two_layer_weights()
    halves = {"a": weights["linear.weight"][:1], "b": weights["linear.weight"][1:]}
    rest = {k: v for k, v in weights.items() if k != "linear.weight"}
    plan = {**copy_plan(rest), "linear.weight": TensorPlan.concat("a", "b")}
    module = load_module(TwoLayers, StateDictCheckpoint({**rest, **halves}), plan, what="test model")
    assert torch.equal(module.linear.weight, weights["linear.weight"])


def test_manifest_checkpoint_builds_meta_modules(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(
        '{"keys": [["linear.weight", [2, 3], "float32"], ["linear.bias", [2], "float32"],'
        ' ["norm.weight", [2], "float32"], ["norm.bias", [2], "float32"]]}'
    )
    checkpoint = ManifestCheckpoint(manifest)
    module = load_module(TwoLayers, checkpoint, copy_plan(checkpoint.keys()), what="test model", device="meta")
    assert module.linear.weight.is_meta and module.linear.weight.shape == (2, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".pth"])
@pytest.mark.parametrize("content, phrase", [(b"", "empty (0 bytes)"), (b"\0" * 70000, "zero bytes")])
def test_empty_or_zero_filled_files_are_named_as_such(tmp_path, suffix, content, phrase):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="incompletely downloaded") as info:
        open_checkpoint(path)
    assert phrase in str(info.value) and "Python objects" not in str(info.value)
