"""FlashFace reference UNet: parity with the official code, strict loading, dtypes, optimizations."""

import json
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import nn

from flashface.errors import ContractError, FlashFaceError, InvalidInputError, ModelFileError
from flashface.models.block_additions import BlockAdditions
from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.ops import CASTING_OPERATIONS, TORCH_OPERATIONS
from flashface.models.row_plan import INPUT, ROWS, TEXT, WEIGHT, RowPlan, RowSpaces
from flashface.models.unet import FlashFaceUNet, UNetConfig
from flashface.models.unet_loading import checkpoint_plan, load_unet
from parity import ManifestCheckpoint, cases, manifest
from straightforward_unet import straightforward_eps
from tiny_unet import tiny_unet_state_dict, write_tiny_unet

WEIGHT_FILES = ("weights.safetensors", "weights.ckpt")


def official_row_weights(branches: int, batch: int, weight: float) -> list[float]:
    """Per-row weights of the official layouts: 3 branches [w]*B + [0]*2B, 2 branches w everywhere."""
    if branches == 3:
        return [weight] * batch + [0.0] * (2 * batch)
    return [weight] * (branches * batch)


def run_case_inputs(model: FlashFaceUNet, inputs: dict, branches: int, weight: float) -> torch.Tensor:
    """One official model call: t and mask per sample are repeated per branch row (interleaved)."""
    batch = inputs["t"].shape[0]
    t = inputs["t"].repeat_interleave(branches)
    references = model.encode_references(inputs["reference_latents"], t[0], inputs["reference_context"])
    return model(
        inputs["x"],
        t,
        inputs["context"],
        inputs["mask"].repeat_interleave(branches, 0),
        references,
        RowPlan.unshared(official_row_weights(branches, batch, weight)),
    )


@pytest.mark.parametrize("weights_file", WEIGHT_FILES)
@pytest.mark.parametrize("case", cases("unet"))
def test_parity_with_official_unet(case, weights_file):
    config = case.config
    model = load_unet(case.weights_dir() / weights_file, num_heads=config["architecture"]["num_heads"])
    assert model.config.context_dim == config["architecture"]["context_dim"]
    assert list(model.config.dim_mult) == config["architecture"]["dim_mult"]
    output = run_case_inputs(model, case.inputs, config["branches"], config["similarity"])
    torch.testing.assert_close(output, case.expected["output"], atol=case.atol, rtol=case.rtol)


@pytest.mark.parametrize("case", cases("unet"))
def test_tiny_writer_uses_the_fixture_key_format(tmp_path, case):
    arch = case.config["architecture"]
    fixture = load_unet(case.weights_dir() / "weights.safetensors", num_heads=arch["num_heads"])
    path = write_tiny_unet(
        tmp_path / "unet.safetensors",
        context_dim=arch["context_dim"],
        dim=arch["dim"],
        dim_mult=arch["dim_mult"],
        num_res_blocks=arch["num_res_blocks"],
        attn_scales=arch["attn_scales"],
        num_heads=arch["num_heads"],
    )
    with safe_open(case.weights_dir() / "weights.safetensors", "pt") as official, safe_open(path, "pt") as ours:
        assert {k: official.get_slice(k).get_shape() for k in official.keys()} == {
            k: ours.get_slice(k).get_shape() for k in ours.keys()
        }
    assert load_unet(path).config == fixture.config


# ---- the real file, on the meta device ------------------------------------------------------------


def manifest_data():
    path = manifest("flashface_unet.json")
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_loads_the_real_key_set_on_meta():
    path, data = manifest_data()
    model = load_unet(ManifestCheckpoint(path), device="meta")
    assert model.config == UNetConfig()  # SD1.5 FlashFace, inferred from the shapes
    assert not any(name.startswith("ref_middle") for name, _ in model.named_modules())
    ref_middle = sum(torch.Size(shape).numel() for name, shape, _ in data["keys"] if name.startswith("ref_middle."))
    assert sum(p.numel() for p in model.parameters()) == data["unique_parameters"] - ref_middle
    assert all(p.is_meta for p in model.parameters())


def test_plan_aliases_exactly_the_manifest_alias_groups():
    path, data = manifest_data()
    model = load_unet(ManifestCheckpoint(path), device="meta")
    plan = checkpoint_plan(model.config)
    planned = {frozenset(p.file_keys) for p in plan.values() if len(p.file_keys) > 1}
    assert planned == {frozenset(group) for group in data["alias_groups"]}
    read = {k for p in plan.values() for k in p.file_keys}
    assert read == {name for name, _, _ in data["keys"] if not name.startswith("ref_middle.")}


def manifest_tensors():
    checkpoint = ManifestCheckpoint(manifest_data()[0])
    return {key: checkpoint.tensor(key) for key in checkpoint.keys()}


@pytest.mark.parametrize("change", ["missing", "extra", "shape", "no_time_embedding"])
def test_wrong_key_sets_are_rejected(change):
    tensors = manifest_tensors()
    if change == "missing":
        del tensors["ref_decoder.3.1.blocks.0.ffn.2.bias"]
    elif change == "extra":
        tensors["decoder.3.1.blocks.0.self_attn.extra.weight"] = torch.empty(4, device="meta")
    elif change == "shape":
        tensors["ref_encoder.1.0.layer1.2.weight"] = torch.empty(320, 320, 1, 1, device="meta")
    else:
        del tensors["time_embedding.0.weight"]
    with pytest.raises(ModelFileError, match="FlashFace UNet"):
        load_unet(StateDictCheckpoint(tensors, path="broken.ckpt"), device="meta")


def test_truncated_file_is_rejected(tmp_path):
    path = write_tiny_unet(tmp_path / "unet.ckpt")
    state = torch.load(path, weights_only=True)
    keep = dict(list(state.items())[: len(state) // 2])
    with pytest.raises(ModelFileError, match="FlashFace UNet"):
        load_unet(StateDictCheckpoint(keep, path="half.ckpt"))


def test_another_model_is_rejected():
    vae = manifest("sd_v1_vae.json")
    with pytest.raises(ModelFileError, match="FlashFace UNet"):
        load_unet(ManifestCheckpoint(vae), device="meta")


def test_differing_aliases_are_rejected():
    state = tiny_unet_state_dict(seed=1)
    state["ori_decoder.1.1.blocks.0.self_attn.self_attn_first.q.weight"] += 1e-3
    with pytest.raises(ModelFileError, match="decoder.1.1.blocks.0.self_attn.self_attn_first.q.weight"):
        load_unet(StateDictCheckpoint(state, path="tampered.ckpt"))


def test_ref_middle_is_not_needed_and_not_read():
    state = tiny_unet_state_dict(seed=2)
    full = load_unet(StateDictCheckpoint(state))
    without = load_unet(StateDictCheckpoint({k: v for k, v in state.items() if not k.startswith("ref_middle.")}))
    for (name, a), (_, b) in zip(full.state_dict().items(), without.state_dict().items()):
        assert torch.equal(a, b), name


def test_num_heads_argument_then_metadata_then_default(tmp_path):
    safetensors_file = write_tiny_unet(tmp_path / "unet.safetensors", num_heads=2)
    pickle_file = write_tiny_unet(tmp_path / "unet.ckpt", num_heads=2)
    assert load_unet(safetensors_file).config.num_heads == 2
    assert load_unet(safetensors_file, num_heads=4).config.num_heads == 4
    assert load_unet(pickle_file).config.num_heads == 8
    with pytest.raises(ModelFileError, match="heads"):
        load_unet(pickle_file, num_heads=3)


# ---- numerics of the tiny model --------------------------------------------------------------------


def random_call(branches, batch=2, references=3, size=8, ref_size=7, context_dim=32, seed=0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    rows = branches * batch
    return dict(
        x=torch.randn(rows, 4, size, size, generator=g),
        t=torch.full((rows,), 500),
        context=torch.randn(rows, 77, context_dim, generator=g),
        mask=(torch.rand(rows, size, size, generator=g) > 0.5).float(),
        reference_latents=torch.randn(references, 4, ref_size, ref_size, generator=g),
        reference_context=torch.randn(references, 77, context_dim, generator=g),
        rows=RowPlan.unshared(official_row_weights(branches, batch, 1.2)),
    )


def call_model(model, call, references=None):
    references = references or model.encode_references(
        call["reference_latents"], call["t"][0], call["reference_context"], copies=call.get("copies")
    )
    return model(call["x"], call["t"], call["context"], call["mask"], references, call["rows"])


@pytest.fixture(scope="module")
def tiny_model():
    return load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed=3)))


def test_reference_features_cover_middle_and_decoder_blocks(tiny_model):
    call = random_call(2)
    features = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"])
    shapes = {k: tuple(v.shape) for k, v in features.tokens.items()}
    # levels 7x7 (32 ch) and 4x4 (64 ch); the middle runs at 4x4
    assert shapes == {
        "middle_block.1.transformer_blocks.0": (3, 16, 64),
        "output_blocks.0.1.transformer_blocks.0": (3, 16, 64),
        "output_blocks.1.1.transformer_blocks.0": (3, 16, 64),
        "output_blocks.2.1.transformer_blocks.0": (3, 49, 32),
        "output_blocks.3.1.transformer_blocks.0": (3, 49, 32),
    }


def test_references_change_only_weighted_rows(tiny_model):
    call = random_call(3)
    with_refs = call_model(tiny_model, call)
    no_refs = tiny_model(call["x"], call["t"], call["context"], call["mask"], None, RowPlan.unshared([0.0] * 6))
    batch = 2
    assert not torch.allclose(with_refs[:batch], no_refs[:batch], atol=1e-3)
    torch.testing.assert_close(with_refs[batch:], no_refs[batch:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ContractError):
        tiny_model(call["x"], call["t"], call["context"], call["mask"], None, call["rows"])


def test_calls_are_independent(tiny_model):
    first, second = random_call(2, seed=1), random_call(2, seed=2)
    out_first = call_model(tiny_model, first)
    call_model(tiny_model, second)
    torch.testing.assert_close(call_model(tiny_model, first), out_first, atol=0, rtol=0)


def guidance_call(branches, batch=2, seed=7, context_dim=32) -> dict[str, Any]:
    """A call as the sampler makes it: one latent per sample repeated per branch, the same mask,
    [pos | pos | neg] (or [pos | neg]) contexts, and two faces padded to four references (the
    first three times); `rows` is the sampler's plan of it, `padded` the references spelled out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    positive, negative = (torch.randn(batch, 77, context_dim, generator=g) for _ in range(2))
    faces = torch.randn(2, 4, 7, 7, generator=g)
    contexts, texts = ([positive, positive, negative], [0, 0, 1]) if branches == 3 else ([positive, negative], [0, 1])
    weights = official_row_weights(branches, batch, 1.2)
    return dict(
        x=x.repeat(branches, 1, 1, 1),
        t=torch.full((branches * batch,), 400),
        context=torch.cat(contexts),
        mask=(torch.rand(1, 8, 8, generator=g) > 0.5).float().expand(branches * batch, 8, 8),
        reference_latents=faces,
        copies=(3, 1),
        reference_context=negative[:1].expand(2, -1, -1),
        padded=faces[[0, 1, 0, 0]],
        rows=RowPlan.of_chunks(texts, batch, weights),
        weights=weights,
    )


@pytest.mark.parametrize("branches", [2, 3])
def test_the_unet_equals_the_straightforward_computation(tiny_model, branches):
    """Rows computed once while identical, references once with their counts, rows of weight 0
    without the reference term, fused attention: the numbers of every row and every reference copy
    computed as the formulas read (tests/straightforward_unet.py)."""
    call = guidance_call(branches)
    fast = call_model(tiny_model, call)
    oracle = straightforward_eps(
        tiny_model,
        call["x"],
        call["t"],
        call["context"],
        call["mask"],
        call["padded"],
        call["reference_context"][:1].expand(4, -1, -1),
        call["weights"],
    )
    torch.testing.assert_close(fast, oracle, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("branches", [2, 3])
def test_shared_rows_and_counted_references_are_computed_once(tiny_model, branches):
    """What the plan says is shared is computed once, and the same as computing every row and copy."""
    call = guidance_call(branches)
    convolved = []
    hook = tiny_model.input_blocks[0][0].register_forward_hook(lambda module, args, out: convolved.append(out.shape[0]))
    try:
        features = tiny_model.encode_references(
            call["reference_latents"], 400, call["reference_context"], copies=call["copies"]
        )
        shared = call_model(tiny_model, call, features)
        every_copy = tiny_model.encode_references(call["padded"], 400, call["reference_context"][:1].expand(4, -1, -1))
        full = tiny_model(
            call["x"], call["t"], call["context"], call["mask"], every_copy, RowPlan.unshared(call["weights"])
        )
    finally:
        hook.remove()
    assert features.copies == (3, 1) and every_copy.copies is None
    assert next(iter(every_copy.tokens.values())).shape[0] == 4
    assert next(iter(features.tokens.values())).shape[0] == 2
    assert convolved == [2, branches * 2]  # the input convolution: once per sample, then per row
    torch.testing.assert_close(shared, full, atol=2e-5, rtol=1e-5)


def test_row_spaces_follow_the_plan():
    spaces = RowSpaces(guidance_call(3, batch=2)["rows"])
    assert [len(spaces.representatives(space)) for space in (INPUT, TEXT, WEIGHT, ROWS)] == [2, 4, 6, 6]
    assert spaces.representatives(TEXT) == [0, 1, 4, 5]  # samples x (pos, neg)
    texts = spaces.expand(torch.arange(2), INPUT, TEXT)  # the sample of each (sample, text) row
    assert texts.tolist() == [0, 1, 0, 1]
    assert spaces.expand(torch.arange(4), TEXT, ROWS).tolist() == [0, 1, 0, 1, 2, 3]


def test_a_plan_is_checked(tiny_model):
    with pytest.raises(ContractError, match="a sample, a text and a weight"):
        RowPlan((0, 1), (0,), (1.0, 1.0))
    with pytest.raises(ContractError, match="finite"):
        RowPlan.unshared([float("nan")])
    call = random_call(2)
    with pytest.raises(ContractError, match="row plan of 3 rows") as broken:
        tiny_model(call["x"], call["t"], call["context"], call["mask"], None, RowPlan.unshared([0.0] * 3))
    # the library's own contracts are reported as bugs, never as the user's invalid input
    assert not isinstance(broken.value, FlashFaceError)
    assert "bug in ComfyUI-FlashFace" in str(broken.value) and "/issues" in str(broken.value)


@pytest.mark.parametrize("branches", [2, 3])
def test_one_reference_pass_equals_one_per_branch(tiny_model, branches):
    call = random_call(branches, references=2, seed=5)
    shared = call_model(tiny_model, call)
    rows = call["x"].shape[0] // branches
    per_branch = []
    for b in range(branches):
        part = {k: (v[b * rows : (b + 1) * rows] if k in ("x", "t", "context", "mask") else v) for k, v in call.items()}
        part["rows"] = RowPlan.unshared(call["rows"].weights[b * rows : (b + 1) * rows])
        per_branch.append(call_model(tiny_model, part))
    torch.testing.assert_close(torch.cat(per_branch), shared, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_half_precision_runs_on_cpu_close_to_fp32(tmp_path, dtype, tolerance):
    path = write_tiny_unet(tmp_path / "unet.safetensors", seed=4)
    call = random_call(3)
    reference = call_model(load_unet(path), call)
    model = load_unet(path, dtype=dtype)
    norms = [p for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for p in m.parameters()]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    assert model.input_blocks[0][0].weight.dtype == dtype
    features = model.encode_references(call["reference_latents"], 500, call["reference_context"])
    assert all(t.dtype == dtype for t in features.tokens.values())
    output = call_model(model, call, features)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()
    error = (output - reference).abs().max() / reference.abs().max()
    assert error < tolerance


class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, input):
        type(self).calls += 1
        return super().forward(input)


def test_operations_namespace_is_used():
    ops = type(TORCH_OPERATIONS)(**{**vars(TORCH_OPERATIONS), "Linear": CountingLinear})
    model = load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed=3)), operations=ops)
    assert isinstance(model.time_embed[0], CountingLinear)
    CountingLinear.calls = 0
    call_model(model, random_call(2))
    assert CountingLinear.calls > 0


def test_manual_cast_layers_compute_in_the_chosen_dtype(tmp_path):
    path = write_tiny_unet(tmp_path / "unet.safetensors", seed=6)
    call = random_call(3)
    reference = call_model(load_unet(path), call)
    model = load_unet(path, dtype=torch.float16, operations=CASTING_OPERATIONS)  # as ComfyUI's manual-cast layers
    model.manual_cast_dtype = torch.float32  # fp16 storage, fp32 arithmetic
    features = model.encode_references(call["reference_latents"], 500, call["reference_context"])
    assert all(t.dtype == torch.float32 for t in features.tokens.values())
    output = call_model(model, call, features)
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    error = (output - reference).abs().max() / reference.abs().max()
    assert 0 < error < 5e-3  # only the fp16 rounding of the stored weights


def _stored_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("dtype, tolerance", [(torch.float8_e4m3fn, 0.2), (torch.float8_e5m2, 0.35)])
def test_fp8_storage_computes_in_fp32_on_the_cpu_close_to_fp32(tmp_path, dtype, tolerance):
    path = write_tiny_unet(tmp_path / "unet.safetensors", seed=4)
    call = random_call(3)
    reference = call_model(load_unet(path), call)
    model = load_unet(path, dtype=dtype)
    assert model.weight_dtype == dtype and model.compute_dtype == torch.float32
    norms = [p for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for p in m.parameters()]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    output = call_model(model, call)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()
    half = call_model(load_unet(path, dtype=torch.float16, operations=CASTING_OPERATIONS), call)
    error, half_error = (float((out - reference).norm() / reference.norm()) for out in (output, half))
    print(f"\n{dtype}: relative RMS error {error:.4f} (fp16 storage: {half_error:.4f})")
    assert half_error < error < tolerance  # fp8's rounding of the weights, no more
    norm_bytes = sum(p.numel() * 4 for p in norms)
    fp16_bytes = _stored_bytes(load_unet(path, dtype=torch.float16))
    assert _stored_bytes(model) - norm_bytes == (fp16_bytes - norm_bytes) // 2  # every other weight: one byte


# ComfyUI's additions to a main pass: control residuals and block patches ------------------------------

IDENTITY_PATCH = {"patches": {"input_block_patch": [lambda h, options: h]}}  # every row computed on its own


def input_block_shapes(model, call, references) -> tuple[list, torch.Size]:
    """The output shape of each input block and of the middle block in a call."""
    shapes = []
    hooks = [
        block.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
        for block in [*model.input_blocks, model.middle_block]
    ]
    try:
        model(
            call["x"],
            call["t"],
            call["context"],
            call["mask"],
            references,
            call["rows"],
            BlockAdditions(transformer_options=dict(IDENTITY_PATCH)),
        )
    finally:
        for hook in hooks:
            hook.remove()
    return shapes[:-1], shapes[-1]


def test_control_residuals_are_added_where_comfyuis_unet_adds_them(tiny_model):
    """'input' residuals on each input block's output (the list used from its end), 'middle' on the
    middle block's, 'output' on each skip as the decoder takes it (the last input block's first):
    the same as forward hooks adding those tensors at those places."""
    call = random_call(3, seed=11)
    references = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"])
    shapes, middle_shape = input_block_shapes(tiny_model, call, references)
    g = torch.Generator().manual_seed(5)
    inputs = [torch.randn(shape, generator=g) * 0.1 for shape in shapes]
    skips = [torch.randn(shape, generator=g) * 0.1 for shape in shapes]
    middle = torch.randn(middle_shape, generator=g) * 0.1
    control = {"input": list(reversed(inputs)), "middle": [middle], "output": list(skips)}
    controlled = tiny_model(
        call["x"], call["t"], call["context"], call["mask"], references, call["rows"], BlockAdditions(control)
    )
    assert len(control["input"]) == len(inputs) and control["middle"]  # the caller's lists are left as they were

    def add_to_skip(residual):
        def hook(module, args):
            x, *rest = args
            channels = residual.shape[1]
            return (torch.cat([x[:, :-channels], x[:, -channels:] + residual], 1), *rest)

        return hook

    hooks = [
        block.register_forward_hook(lambda m, a, out, r=r: out + r) for block, r in zip(tiny_model.input_blocks, inputs)
    ]
    hooks.append(tiny_model.middle_block.register_forward_hook(lambda m, a, out: out + middle))
    hooks += [
        block.register_forward_pre_hook(add_to_skip(r)) for block, r in zip(tiny_model.output_blocks, reversed(skips))
    ]
    try:
        hooked = tiny_model(
            call["x"],
            call["t"],
            call["context"],
            call["mask"],
            references,
            call["rows"],
            BlockAdditions(transformer_options=dict(IDENTITY_PATCH)),
        )
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(controlled, hooked, atol=1e-5, rtol=1e-5)
    plain = call_model(tiny_model, call, references)
    assert not torch.allclose(controlled, plain, atol=1e-3)
    zeros = {place: [r * 0 for r in residuals] for place, residuals in control.items()}
    torch.testing.assert_close(
        tiny_model(
            call["x"], call["t"], call["context"], call["mask"], references, call["rows"], BlockAdditions(zeros)
        ),
        plain,
        atol=1e-5,
        rtol=1e-5,
    )


def test_block_patches_are_called_like_comfyuis_unet_calls_them(tiny_model):
    call = random_call(2, seed=12)
    references = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"])
    seen = []

    def record(kind):
        def patch(*values):
            *tensors, options = values
            seen.append((kind, options["block"], tuple(tensors[0].shape)))
            return tensors[0] if len(tensors) == 1 else tuple(tensors)

        return patch

    options = {
        "patches": {
            name: [record(name)] for name in ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
        }
    }
    patched = tiny_model(
        call["x"],
        call["t"],
        call["context"],
        call["mask"],
        references,
        call["rows"],
        BlockAdditions(transformer_options=options),
    )
    blocks = len(tiny_model.input_blocks)
    assert [entry[:2] for entry in seen[:2]] == [
        ("input_block_patch", ("input", 0)),
        ("input_block_patch_after_skip", ("input", 0)),
    ]
    assert [entry[1] for entry in seen if entry[0] == "output_block_patch"] == [("output", i) for i in range(blocks)]
    torch.testing.assert_close(patched, call_model(tiny_model, call, references), atol=1e-5, rtol=1e-5)

    def halve_skip(h, hsp, options):
        return h, hsp * 0.5

    halved = tiny_model(
        call["x"],
        call["t"],
        call["context"],
        call["mask"],
        references,
        call["rows"],
        BlockAdditions(transformer_options={"patches": {"output_block_patch": [halve_skip]}}),
    )
    assert not torch.allclose(halved, patched, atol=1e-3)


def test_a_residual_for_another_model_size_is_refused_by_name(tiny_model):
    call = random_call(2, seed=13)
    references = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"])
    with pytest.raises(InvalidInputError, match="made for another model"):
        tiny_model(
            call["x"],
            call["t"],
            call["context"],
            call["mask"],
            references,
            call["rows"],
            BlockAdditions({"middle": [torch.zeros(4, 1280, 1, 1)]}),
        )
