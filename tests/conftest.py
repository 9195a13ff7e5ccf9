"""Shared fixtures, and the tiers. A ComfyUI server is started once per session (per version), only
by tests that ask for it.

A test's tier is the folder it lives in (tests/fast, tests/smoke, tests/slow, tests/comfyui,
tests/browser): each test gets its folder's marker, so no test can carry a wrong one. The markers
and what each tier holds are listed in pyproject.toml; `python -m pytest` runs fast and smoke,
`python -m pytest -m ""` everything."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from comfy_installs import ComfyInstall, browser_installs, comfy_installs
from comfy_server import running_server
from demo_cases import DemoCase, demo_cases

TESTS = Path(__file__).parent
VALUE_SOURCE_NODES = TESTS / "data" / "value_source_nodes"  # a test-only node pack
TINY_SD15_DETECTION = TESTS / "data" / "tiny_sd15_detection"  # a test-only pack: tiny SD1.5 files load as SD1.5
ATTENTION_PATCH_NODES = TESTS / "data" / "attention_patch_nodes"  # a test-only pack: IPAdapter-like image tokens
COMFYUI_FIXTURES = {"comfyui", "comfyui_tiny", "comfy_install", "comfyui_for_browser"}
IN_THIS_PROCESS_TIERS = ("fast", "slow")  # tiers whose tests run no ComfyUI


def pytest_collection_modifyitems(config, items):
    """Each test's marker is its folder's; a test outside a tier's folder, or one that runs ComfyUI
    in a tier that runs none, stops the collection."""
    tiers = {line.split(":")[0].strip() for line in config.getini("markers")}
    for item in items:
        parts = Path(item.path).relative_to(TESTS).parts
        tier = parts[0] if len(parts) > 1 else None
        if tier not in tiers:
            raise pytest.UsageError(
                f"{item.nodeid}: a test lives in the folder of its tier, one of tests/{{{','.join(sorted(tiers))}}}/ "
                "(pyproject.toml's markers say what each holds)"
            )
        if tier in IN_THIS_PROCESS_TIERS and COMFYUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} runs ComfyUI: it belongs in tests/smoke/ or tests/comfyui/")
        item.add_marker(tier)


@contextmanager
def running_comfyui(install: ComfyInstall, workdir: Path):
    """A running ComfyUI of `install` (--cpu, 127.0.0.1, free port) with this pack and the test-only
    packs in custom_nodes/ (TestValueSource, the tiny-SD1.5 detection scaffold, TestImageTokens),
    and the bundled workflows' example photos in its input/ folder; skips where it cannot run."""
    if install.missing:
        pytest.skip(install.missing)
    packs = [VALUE_SOURCE_NODES, TINY_SD15_DETECTION, ATTENTION_PATCH_NODES]
    with running_server(workdir, install, custom_nodes=packs) as server:
        yield server


@pytest.fixture(scope="session", params=comfy_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfyui(request, tmp_path_factory):
    """A running ComfyUI, each version the tests know in turn (see `running_comfyui`)."""
    with running_comfyui(request.param, tmp_path_factory.mktemp(f"comfyui-{request.param.version}")) as server:
        yield server


@pytest.fixture(params=comfy_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfy_install(request) -> ComfyInstall:
    """Each ComfyUI version the tests know in turn, installed (for tests that run ComfyUI's modules in
    a process of their own, `comfy_process.run_with_comfyui`)."""
    if request.param.missing:
        pytest.skip(request.param.missing)
    return request.param


@pytest.fixture(scope="module", params=browser_installs(), ids=lambda install: f"comfyui-{install.version}")
def comfyui_for_browser(request, tmp_path_factory):
    """A running ComfyUI for the web-UI tests: each version with its own frontend, and 0.8.0 with the
    newest frontend on PyPI. Module-scoped: a page's event loop must not outlive its module."""
    with running_comfyui(request.param, tmp_path_factory.mktemp(f"browser-{request.param.version}")) as server:
        yield server


@pytest.fixture(scope="session")
def comfyui_tiny(comfyui):
    """The session's ComfyUI with the tiny models in models/flashface (plus a second detector file
    and a corrupt UNet file), the tiny LoRA, the tiny ControlNets with their width-64 UNet and a
    face-less photo in input/ (names in comfy_workflows.py and tiny_flashface_models.py)."""
    from PIL import Image

    from comfy_workflows import BLANK_PHOTO, CORRUPT_MODEL, SECOND_DETECTOR, TEXT_AS_MODEL
    from tiny_flashface_models import TINY_MODELS, write_tiny_model_folders

    write_tiny_model_folders(comfyui.models_dir)
    folder = comfyui.models_dir / "flashface"
    shutil.copy(folder / TINY_MODELS["detector_name"], folder / SECOND_DETECTOR)
    (folder / CORRUPT_MODEL).write_bytes(b"\x00" * 64 + b"not a model")
    (folder / TEXT_AS_MODEL).write_text("notes: the detector is retinaface_resnet50.pth\n")
    Image.new("RGB", (320, 240), (128, 128, 128)).save(comfyui.input_dir / BLANK_PHOTO)
    return comfyui


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """The tiny seeded model set (UNet, VAE, CLIP, RetinaFace) written once per session."""
    from tiny_flashface_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="module")
def pipeline(tiny_model_files):
    """A FlashFacePipeline of the tiny UNet, VAE and text encoder, on the CPU."""
    from flashface.models.clip_text import load_text_encoder
    from flashface.models.unet_loading import load_unet
    from flashface.models.vae import load_vae
    from flashface.pipeline import FlashFacePipeline

    return FlashFacePipeline(
        load_unet(tiny_model_files["unet_name"]),
        load_vae(tiny_model_files["vae_name"]),
        load_text_encoder(tiny_model_files["clip_name"]),
        device="cpu",
    )


@pytest.fixture(scope="module")
def model_arguments(tiny_model_files):
    """The command-line flags that give `python -m flashface generate` the tiny models."""
    from cli_runs import model_flags

    return model_flags(tiny_model_files)


@pytest.fixture(params=demo_cases())
def demo(request) -> DemoCase:
    return DemoCase(request.param)


@pytest.fixture
def models_folder(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "demo_models"
