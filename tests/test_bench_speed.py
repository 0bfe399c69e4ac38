"""The speed benchmark (mtrec.bench.speed): its formulas against hand-computed values, and one run on
a tiny random model on the CPU whose JSON must hold every field, positive throughputs and consistent
ratios. The torch.compile check is slow on a CPU (minutes): it runs only with MTREC_TEST_COMPILE=1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mtrec.bench import speed
from tests_paths import ROOT

COMPILE = os.environ.get("MTREC_TEST_COMPILE") == "1"


def test_padding_fraction_random_and_bucketed_by_hand():
    lengths = np.array([1, 8, 2, 7])
    # [1, 8] and [2, 7]: 18 real tokens in 2*8 + 2*7 = 30 positions
    assert speed.padding_fraction(lengths, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(1 - 18 / 30)
    assert [b.tolist() for b in speed.length_bucketed_batches(lengths, 2, seed=None)] == [[0, 2], [3, 1]]
    buckets = speed.length_bucketed_batches(lengths, 2, seed=0)
    assert sorted(sorted(b.tolist()) for b in buckets) == [[0, 2], [1, 3]]  # neighbours in length order
    assert speed.padding_fraction(lengths, buckets) == pytest.approx(1 - 18 / 20)  # 2*2 + 2*8 positions
    rows = np.concatenate(speed.random_batches(10, 3, seed=1))
    assert sorted(rows.tolist()) == list(range(10))  # every row once; last batch smaller


def test_flops_per_token_by_hand():
    # 4 x (100 matmul + 10 LoRA weights) + 8 x 2 layers x 16 tokens x 8 hidden
    assert speed.flops_per_token(100, 10, layers=2, seq_len=16, hidden=8) == 440 + 2048


def test_options_that_contradict_raise():
    with pytest.raises(SystemExit):
        speed.parse_args(["--beams", "5", "--top-k", "10"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--compile", "--warmup", "0"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--steps", "0"])


def test_optimizer_matches_training(tiny_backbone_dir):
    """The bench builds its optimizer with training's builder and default learning rates: the same groups."""
    from mtrec.config import Config
    from mtrec.training import make_optimizer

    args = speed.parse_args(["--items", "20", "--device", "cpu"])
    config, folder, _ = speed.load_models_config(
        speed.parse_args([f"--backbone={tiny_backbone_dir}", "--device", "cpu"]))
    model = speed.build_mtrec(speed.build_base(config, folder, False, torch.device("cpu"), 0), args, torch.device("cpu"))
    ours, theirs = speed.make_adamw(model, torch.device("cpu")), make_optimizer(model, Config())
    assert [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in ours.param_groups] == \
           [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in theirs.param_groups]


def test_lora_options_are_training_model_config():
    """The bench's LoRA options fill mtrec.config.ModelConfig, whose other fields keep training's defaults."""
    from mtrec.config import ModelConfig

    args = speed.parse_args(["--lora-dropout", "0.05", "--lora-targets", "auto", "--device", "cpu"])
    assert speed.model_config(args) == ModelConfig()
    args = speed.parse_args(["--lora-r", "4", "--lora-targets", "q_proj,k_proj", "--device", "cpu"])
    assert speed.model_config(args) == ModelConfig(lora_r=4, lora_dropout=0.0, lora_targets=["q_proj", "k_proj"])


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "auto", "attention"])
def test_models_use_training_lora_builder(tiny_backbone_dir, targets):
    """mtrec's model is mtrec.model.build's (lora_config + wrap_model); TALLRec's LoRA adapts the same
    projections of the same layers with the same rank, alpha and dropout."""
    from mtrec.model.build import lora_config

    cpu = torch.device("cpu")
    args = speed.parse_args([f"--backbone={tiny_backbone_dir}", "--device=cpu", "--items=20", "--lora-r=4",
                             f"--lora-targets={targets}"])
    config, folder, _ = speed.load_models_config(args)
    base = speed.build_base(config, folder, False, cpu, 0)
    expected = lora_config(speed.model_config(args), base, speed.instruction_token_ids(base))
    vocab = base.get_input_embeddings().num_embeddings
    mtrec = speed.build_mtrec(base, args, cpu)  # wraps `base` in place
    got = mtrec.peft_config["default"]
    for field in ("r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "trainable_token_indices"):
        assert getattr(got, field) == getattr(expected, field), field
    assert list(got.trainable_token_indices.values()) == [list(range(vocab - 4, vocab))]
    tallrec = speed.build_tallrec(speed.build_base(config, folder, True, cpu, 0), args, cpu)
    t = tallrec.peft_config["default"]
    assert (t.r, t.lora_alpha, t.lora_dropout, t.task_type) == (4, 16, 0.0, "CAUSAL_LM")

    def adapted(model):  # "layers.<i>.<path to projection>" of every LoRA-wrapped module
        return {n[n.index("layers."):] for n, m in model.named_modules() if hasattr(m, "lora_A")}

    assert adapted(mtrec) == adapted(tallrec) and adapted(mtrec)
    if targets == "q_proj,v_proj":
        assert {n.rsplit(".", 1)[-1] for n in adapted(mtrec)} == {"q_proj", "v_proj"}


def test_seen_sets_feed_mtrec_ranking_and_beam_masking():
    """random_seen gives 10 to 200 distinct items per user; mtrec's ranking (mtrec.ranking.top_k) never
    returns them, and the beam baseline's lookup agrees between Seen's dense table and its index pairs."""
    from mtrec.ranking import Seen, top_k

    rng = np.random.default_rng(0)
    users, items = speed.random_seen(12, 300, rng)
    counts = np.bincount(users, minlength=12)
    assert counts.min() >= 10 and counts.max() < 150
    assert len(set(zip(users.tolist(), items.tolist()))) == len(users)  # distinct per user
    dense, sparse = Seen(users, items, 12, 300, dense=True), Seen(users, items, 12, 300, dense=False)
    batch = torch.tensor([3, 0, 11, 3])
    scores = torch.zeros(4, 300)
    for row, u in enumerate(batch.tolist()):  # the seen items get the top scores
        scores[row, torch.as_tensor(items[users == u])] = 10.0
    top = top_k(scores.clone(), 20, batch, dense)[1]
    for row, u in enumerate(batch.tolist()):
        assert not set(top[row].tolist()) & set(items[users == u].tolist())
    assert torch.equal(top_k(scores.clone(), 20, batch, sparse)[1], top)
    picked = torch.as_tensor(rng.integers(0, 300, size=(4, 30)))
    truth = torch.tensor([[int(i) in set(items[users == u].tolist()) for i in row]
                          for u, row in zip(batch.tolist(), picked)])
    assert torch.equal(dense.contains(batch, picked), truth)
    assert torch.equal(sparse.contains(batch, picked), truth)


def test_imports_nothing_the_gpu_image_lacks():
    """The GPU image has no datasets, evaluate or gguf: importing the bench must not need them."""
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('datasets', 'evaluate', 'gguf'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import mtrec.bench.speed\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory, tiny_backbone_dir):
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    argv = [f"--backbone=config:{tiny_backbone_dir}/config.json", f"--tokenizer={tiny_backbone_dir}",
            "--device=cpu", "--steps=2", "--warmup=1", "--items=50", "--rank-batch=4", "--bucket-pool=8",
            "--peak-size=256", "--threads=1", f"--out={out}"] + (["--compile", "--dtype=fp32"] if COMPILE else [])
    assert speed.main(argv) == 0
    return json.loads(out.read_text())


def test_json_has_every_field(tiny_result):
    r = tiny_result
    for key in ("schema_version", "label", "environment", "args", "shape", "weights", "parameters", "train",
                "padding", "ranking", "matmul_peak", "flops", "ratios"):
        assert key in r, key
    assert r["weights"] == "random"
    assert set(r["train"]) == {"mtrec_eager", "tallrec_eager"} | ({"mtrec_compiled"} if COMPILE else set())
    assert set(r["ranking"]) == {"mtrec", "beam"}
    for env_key in ("device", "device_name", "torch", "transformers", "peft"):
        assert r["environment"][env_key]
    assert {k: r["shape"][k] for k in ("hidden", "layers", "seq_len", "batch", "items")} == \
           {"hidden": 32, "layers": 2, "seq_len": 128, "batch": 8, "items": 50}


def test_numbers_positive_and_ratios_consistent(tiny_result):
    r = tiny_result
    for run in r["train"].values():
        assert run["steps"] == 2 and len(run["losses"]) == 3
        assert all(np.isfinite(run["losses"]))
        for key in ("seconds", "tokens_per_s", "samples_per_s", "step_ms"):
            assert run[key] > 0, key
        assert run["tokens"] == 2 * 8 * 128  # fixed-length rows: no padding
        assert run["memory"]["peak_bytes"] > 0
    for rank in r["ranking"].values():
        assert rank["users"] == 2 * 4 and rank["users_per_s"] > 0 and rank["memory"]["peak_bytes"] > 0
    ratios = r["ratios"]
    assert ratios["train_tokens_per_s_mtrec_over_tallrec"] == pytest.approx(
        r["train"]["mtrec_eager"]["tokens_per_s"] / r["train"]["tallrec_eager"]["tokens_per_s"])
    assert ratios["ranking_users_per_s_mtrec_over_beam"] == pytest.approx(
        r["ranking"]["mtrec"]["users_per_s"] / r["ranking"]["beam"]["users_per_s"])
    assert r["matmul_peak"]["flops_per_s"] > 0
    assert all(0 < v for v in r["flops"]["mfu"].values())


def test_flops_counts_of_the_tiny_shape(tiny_result):
    """Hidden 32, 2 layers, MLP 64, 4 heads: per layer q,k,v,o 4*32*32 + gate,up,down 3*32*64 = 10,240
    matmul weights; LoRA r=8 on q and v: 2 * 8 * (32 + 32) per layer."""
    p, f = tiny_result["parameters"], tiny_result["flops"]
    vocab = tiny_result["shape"]["vocab"]
    assert p["mtrec"]["backbone_matmul"] == 2 * 10_240 and p["mtrec"]["lora"] == 2 * 1024
    assert p["tallrec"]["matmul"] == 2 * 10_240 + vocab * 32 and p["tallrec"]["lm_head"] == vocab * 32
    attention = 8 * 2 * 128 * 32
    assert f["per_token"]["mtrec"] == 4 * (20_480 + 2048) + attention
    assert f["per_token"]["tallrec"] == 4 * (20_480 + vocab * 32 + 2048) + attention
    # heads per sample: rating, like (32 each), categories (32*18), query (32*32), item table (50*32)
    assert f["mtrec_heads_per_sample"] == 4 * (32 + 32 + 32 * 18 + 32 * 32 + 50 * 32)


def test_bucketing_reduces_padding(tiny_result):
    pad = tiny_result["padding"]
    assert 0 <= pad["bucketed"]["padding_fraction"] <= pad["random"]["padding_fraction"] < 1
    assert pad["bucketed"]["tokens_per_s"] > 0 and pad["random"]["tokens_per_s"] > 0


@pytest.mark.skipif(not COMPILE, reason="torch.compile takes minutes on a CPU; set MTREC_TEST_COMPILE=1")
def test_compiled_losses_equal_eager(tiny_result):
    compiled = tiny_result["train"]["mtrec_compiled"]
    assert compiled["losses_match"] is True, compiled["loss_rel_diffs"]
    assert compiled["loss_max_rel_diff"] <= 1e-3


def test_ratios_compare_like_with_like():
    """Ranking at equal users per call (mtrec retimed at the beam batch size); compiled mtrec is never
    set against the eager TALLRec step."""
    from mtrec.bench.speed import ratios

    def rank(users_per_s, per_call):
        return {"users_per_s": users_per_s, "users_per_call": per_call}

    train = {"mtrec_eager": {"tokens_per_s": 30.0}, "mtrec_compiled": {"tokens_per_s": 45.0},
             "tallrec_eager": {"tokens_per_s": 20.0}}
    result = {"train": train, "padding": {"bucketed_over_random_tokens_per_s": 1.3},
              "ranking": {"mtrec": rank(80.0, 16), "mtrec_at_beam_batch": rank(40.0, 4), "beam": rank(2.0, 4)}}
    got = ratios(result)
    assert got == {"train_tokens_per_s_mtrec_over_tallrec": 1.5, "ranking_users_per_s_mtrec_over_beam": 20.0,
                   "padding_tokens_per_s_bucketed_over_random": 1.3, "train_tokens_per_s_compiled_over_eager": 1.5}
