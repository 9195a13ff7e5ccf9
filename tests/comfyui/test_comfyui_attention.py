"""ComfyUI's attention patches on FlashFace Apply's MODEL in a real server (every ComfyUI version the
tests know): a test-only pack that adds image tokens to every cross-attention as IPAdapter does
(`tests/data/attention_patch_nodes`) acts with a weight, changes nothing at weight 0 or as an identity,
and is handed SD1.5's shapes and row kinds, also on FlashFace's third branch; stock attention patches
(HyperTile, Tome, hypernetworks) are in the stock-node table. cubiq's IPAdapter_plus is not on a
package registry reachable here, so it is not run."""

from __future__ import annotations

import pytest

from comfy_workflows import cheap_model_workflow, level_difference, run_to_levels, with_model_node


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


def with_image_tokens(weight: float | None, identity: bool = False) -> dict:
    """The bundled KSampler workflow (its reference guidance launches within the run, so the third
    branch is sampled too), with TestImageTokens between FlashFace Apply and KSampler."""
    prompt = cheap_model_workflow("flashface_ksampler", 64, steps=4, seed=12)
    if weight is not None:
        with_model_node(prompt, "TestImageTokens", weight=weight, identity=identity)
    return prompt


def test_an_ipadapter_like_patch_acts_with_its_weight_and_is_nothing_at_weight_zero(server):
    plain = run_to_levels(server, with_image_tokens(None))
    images = {weight: run_to_levels(server, with_image_tokens(weight)) for weight in (0.0, 1.0, 3.0)}
    identity = run_to_levels(server, with_image_tokens(1.0, identity=True))
    for weight, image in images.items():
        print(f"\nimage tokens at weight {weight}: {level_difference(image, plain)} from no patch")
    print(f"identity replacement: {level_difference(identity, plain)} from no patch")
    assert (images[0.0] - plain).abs().max() <= 1 and (identity - plain).abs().max() <= 1
    assert 1 < (images[1.0] - plain).abs().float().mean() < (images[3.0] - plain).abs().float().mean()
