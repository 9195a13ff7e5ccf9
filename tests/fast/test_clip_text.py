"""CLIP ViT-L/14 text encoder and tokenizer: parity with the official code, both namings, strict
loading of the real key set, dtypes, and the errors for other files."""

import json

import open_clip
import pytest
import torch

from flashface.errors import ContractError, ModelFileError
from flashface.models.checkpoint import MODEL_SUFFIXES, StateDictCheckpoint, open_checkpoint
from flashface.models.clip_text import (
    END_OF_TEXT,
    END_TOKEN,
    HF_PREFIXES,
    MODEL_NAME,
    START_TOKEN,
    TextEncoderConfig,
    Tokenizer,
    encode_texts,
    load_text_encoder,
)
from parity import ManifestCheckpoint, cases, manifest
from tiny_clip_text import hf_clip_state_dict, official_clip_state_dict, write_tiny_clip_text

MANIFEST = "clip_vit_l_14.json"
PROMPTS = ["a photo of a woman, soft light", "", "Tom &amp;amp; Jerry,  UPPER case"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def weight_files(case) -> list:
    files = sorted(p for p in case.weights_dir().iterdir() if p.stem == "weights" and p.suffix in MODEL_SUFFIXES)
    assert files, f"no weight file in {case.weights_dir()}"
    return files


# ---- parity with the official code -----------------------------------------------------------------


@pytest.mark.parametrize("case", cases("clip_text"))
def test_token_ids_match_the_official_tokenizer(case):
    ids = Tokenizer(case.config["text_architecture"]["text_len"])(case.config["prompts"])
    assert ids.dtype == torch.long
    assert torch.equal(ids, case.expected["token_ids"])
    assert torch.equal(ids, case.inputs["token_ids"])


def _random_words(seed: int, count: int) -> list[str]:
    """Words that exercise the merge order: repeated letters and pairs, frequent letters, other scripts."""
    generator = torch.Generator().manual_seed(seed)

    def pick(alphabet: str, length: int) -> str:
        return "".join(alphabet[i] for i in torch.randint(len(alphabet), (length,), generator=generator))

    words = [c * n for c in "aeo" for n in range(1, 40)] + [
        p * n for p in ("ab", "aab", "ll", "ing") for n in range(1, 25)
    ]
    for index in range(count):
        alphabet = ("aabbcdeeeilmnoorsstt", "abcdefghijklmnopqrstuvwxyz", "éàüßçñøåæœ日本語的", "ab1!")[index % 4]
        words.append(pick(alphabet, int(torch.randint(1, 40, (1,), generator=generator))))
    return words


def test_word_merges_equal_open_clips_bpe(tokenizer):
    """Our O(n log n) merge gives open_clip's (the official BPE's) tokens for every word."""
    reference = open_clip.tokenizer.SimpleTokenizer()
    byte_chars = open_clip.tokenizer.bytes_to_unicode()
    checked = 0
    for word in _random_words(seed=0, count=12000):
        for piece in Tokenizer._PIECES.findall(tokenizer.clean(word)):
            expected = reference.bpe("".join(byte_chars[b] for b in piece.encode("utf-8"))).split(" ")
            assert tokenizer.encode(piece) == [reference.encoder[token] for token in expected], piece
            checked += 1
    assert checked > 12000


def test_only_the_kept_tokens_are_computed_and_they_are_the_same(tokenizer):
    text = " ".join(_random_words(seed=1, count=400))
    full = tokenizer.encode(text)
    assert len(full) > 200
    assert tokenizer.encode(text, limit=75) == full[:75]
    assert tokenizer([text])[0, 1:76].tolist() == full[:75]
    long_word = "x" * 40_000  # seconds to minutes in the quadratic official BPE; bench/bench_tokenizer.py
    assert tokenizer([long_word]).shape == (1, 77)


@pytest.mark.parametrize("case", cases("clip_text"))
def test_embeddings_match_the_official_text_tower(case):
    arch = case.config["text_architecture"]
    for path in weight_files(case):
        model = load_text_encoder(path, num_heads=arch["num_heads"])
        assert model.config == TextEncoderConfig(
            vocab_size=arch["vocab_size"],
            context_length=arch["text_len"],
            width=arch["dim"],
            layers=arch["num_layers"],
            num_heads=arch["num_heads"],
            mlp_width=arch["dim"] * arch["mlp_ratio"],
        )
        from_ids = model(case.inputs["token_ids"])
        torch.testing.assert_close(from_ids, case.expected["embeddings"], atol=case.atol, rtol=case.rtol)
        assert torch.equal(encode_texts(model, case.config["prompts"], "cpu"), from_ids)


@pytest.mark.parametrize("case", cases("clip_text"))
def test_open_clip_tokenizer_is_not_the_official_one(case, tokenizer):
    """open_clip pads with 0 where the official tokenizer pads with the end token, hence our own."""
    official = case.expected["token_ids"]
    if "open_clip_token_ids" in case.expected:
        assert not torch.equal(case.expected["open_clip_token_ids"], official)
    live = open_clip.get_tokenizer("ViT-L-14")(case.config["prompts"])
    assert not torch.equal(live, official)
    assert torch.equal(Tokenizer(official.shape[1])(case.config["prompts"]), official)


def test_special_tokens_written_in_a_prompt_are_recognised(tokenizer):
    ids = tokenizer([f"a {END_OF_TEXT.upper()} b"])[0]
    assert ids[0] == START_TOKEN and ids[2] == END_TOKEN
    assert ids[1] == tokenizer(["a"])[0, 1] and ids[3] == tokenizer(["b"])[0, 1]


def test_truncation_keeps_the_end_token(tokenizer):
    ids = tokenizer(["word " * 200, "word " * 10])
    assert ids.shape == (2, 77)
    assert torch.equal(ids[0, 1:76], ids[0, 1:2].expand(75)) and ids[0, 76] == END_TOKEN
    assert torch.equal(ids[1, 11:], torch.full((66,), END_TOKEN))


# ---- the real file, on the meta device ---------------------------------------------------------------


def manifest_tensors():
    checkpoint = ManifestCheckpoint(manifest(MANIFEST))
    return {key: checkpoint.tensor(key) for key in checkpoint.keys()}


def test_loads_the_real_text_tower_on_meta():
    data = json.loads(manifest(MANIFEST).read_text(encoding="utf-8"))
    model = load_text_encoder(ManifestCheckpoint(manifest(MANIFEST)), device="meta")
    assert model.config == TextEncoderConfig()  # ViT-L/14, inferred from the shapes
    text_tower = [
        (name, shape) for name, shape, _ in data["keys"] if name.startswith("textual.") and name != "textual.head"
    ]
    assert {"textual." + key: list(t.shape) for key, t in model.state_dict().items()} == dict(text_tower)
    assert all(p.is_meta for p in model.parameters())
    embeddings = encode_texts(model, ["a photo"], "meta")
    assert embeddings.is_meta and embeddings.shape == (1, 77, 768)


@pytest.mark.parametrize("change", ["missing", "shape", "extra", "no_blocks"])
def test_wrong_key_sets_are_rejected(change):
    tensors = manifest_tensors()
    if change == "missing":
        del tensors["textual.transformer.11.mlp.2.bias"]
    elif change == "shape":
        tensors["textual.transformer.3.attn.to_qkv.weight"] = torch.empty(768 * 3, 512, device="meta")
    elif change == "extra":
        tensors["textual.transformer.3.attn.extra.weight"] = torch.empty(4, device="meta")
    else:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("textual.transformer.")}
    with pytest.raises(ModelFileError, match="CLIP ViT-L/14"):
        load_text_encoder(StateDictCheckpoint(tensors, path="broken.pth"), device="meta")


def test_unused_parts_of_the_whole_clip_are_never_read():
    class VisionRefusing(StateDictCheckpoint):
        def tensor(self, key):
            assert key.startswith("textual.") and key != "textual.head", key
            return super().tensor(key)

    state = official_clip_state_dict(seed=3)
    load_text_encoder(VisionRefusing(state), num_heads=2)


# ---- Hugging Face naming ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", HF_PREFIXES)
def test_hugging_face_naming_gives_the_official_outputs(tokenizer, prefix):
    official = load_text_encoder(StateDictCheckpoint(official_clip_state_dict(seed=4)), num_heads=2)
    hf = load_text_encoder(StateDictCheckpoint(hf_clip_state_dict(seed=4, prefix=prefix)), num_heads=2)
    for (name, a), (_, b) in zip(official.state_dict().items(), hf.state_dict().items()):
        assert torch.equal(a, b), name
    ids = tokenizer(PROMPTS)
    assert torch.equal(official(ids), hf(ids))


def test_written_files_load_in_every_naming_and_format(tmp_path):
    safetensors_file = write_tiny_clip_text(tmp_path / "clip.safetensors", seed=5, width=32, heads=4)
    outputs = [encode_texts(load_text_encoder(safetensors_file), PROMPTS, "cpu")]
    assert load_text_encoder(safetensors_file).config.num_heads == 4  # from the metadata
    for name, naming in (("clip.pth", "official"), ("clip_l.safetensors", "hf"), ("clip_l.pth", "hf")):
        path = write_tiny_clip_text(tmp_path / name, seed=5, width=32, heads=4, naming=naming)
        outputs.append(encode_texts(load_text_encoder(path, num_heads=4), PROMPTS, "cpu"))
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_an_open_checkpoint_stays_open_for_its_owner(tmp_path):
    checkpoint = open_checkpoint(write_tiny_clip_text(tmp_path / "clip.safetensors", seed=8))
    first = encode_texts(load_text_encoder(checkpoint), PROMPTS, "cpu")
    assert torch.equal(encode_texts(load_text_encoder(checkpoint), PROMPTS, "cpu"), first)
    checkpoint.close()


def test_num_heads_argument_then_metadata_then_width_over_64(tmp_path):
    pickle_file = write_tiny_clip_text(tmp_path / "clip.pth", width=32, heads=2)
    with pytest.raises(ModelFileError, match="num_heads"):  # 32 / 64 heads: must be told
        load_text_encoder(pickle_file)
    assert load_text_encoder(pickle_file, num_heads=2).config.num_heads == 2
    with pytest.raises(ModelFileError, match="heads"):
        load_text_encoder(pickle_file, num_heads=3)
    full_size = load_text_encoder(ManifestCheckpoint(manifest(MANIFEST)), device="meta")
    assert full_size.config.num_heads == 768 // 64


# ---- dtypes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_on_cpu_is_close_to_fp32(tokenizer, dtype, tolerance):
    checkpoint = StateDictCheckpoint(official_clip_state_dict(seed=6))
    reference = load_text_encoder(checkpoint, num_heads=2)(tokenizer(PROMPTS))
    model = load_text_encoder(checkpoint, num_heads=2, dtype=dtype)
    assert model.norm.weight.dtype == torch.float32 and model.transformer[0].norm1.weight.dtype == torch.float32
    assert model.transformer[0].attn.to_qkv.weight.dtype == dtype
    output = model(tokenizer(PROMPTS))
    assert output.dtype == dtype
    assert ((output.float() - reference).norm() / reference.norm()).item() < tolerance


# ---- errors ------------------------------------------------------------------------------------------


def meta_state(shapes: dict) -> StateDictCheckpoint:
    return StateDictCheckpoint({k: torch.empty(s, device="meta") for k, s in shapes.items()}, path="other.safetensors")


@pytest.mark.parametrize("width, name", [(1024, "ViT-H"), (1280, "ViT-bigG")])
def test_other_clip_text_encoders_are_named(width, name):
    hf = meta_state({"text_model.embeddings.token_embedding.weight": (49408, width)})
    open_clip_naming = meta_state({"token_embedding.weight": (49408, width), "positional_embedding": (77, width)})
    for checkpoint in (hf, open_clip_naming):
        with pytest.raises(ModelFileError, match=f"{name}.*FlashFace needs the CLIP ViT-L/14"):
            load_text_encoder(checkpoint, device="meta")


def test_another_model_is_rejected():
    with pytest.raises(ModelFileError, match=f"not a {MODEL_NAME}.*clip_l.safetensors"):
        load_text_encoder(ManifestCheckpoint(manifest("sd_v1_vae.json")), device="meta")


def test_token_ids_of_the_wrong_shape_are_rejected(tokenizer):
    model = load_text_encoder(StateDictCheckpoint(official_clip_state_dict(seed=7)), num_heads=2)
    with pytest.raises(ContractError, match="77"):
        model(tokenizer(PROMPTS)[:, :76])
