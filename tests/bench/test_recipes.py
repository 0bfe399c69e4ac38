"""`python -m mtrec.bench speed recipes`: whole training recipes timed end to end, on a tiny model."""

import json

import pytest

from mtrec.bench import speed


def test_recipes_time_the_training_loop_and_the_tallrec_step(four_layers, tmp_path):
    from tests_paths import ROOT

    out = tmp_path / "recipes.json"
    assert speed.main(["recipes", "--config", str(ROOT / "tests/configs/tiny.yaml"), "--set", f"model.backbone={four_layers}",
                       "--only", "today,top-2 cached,tallrec", "--steps", "4", "--fixed-batches", "2",
                       "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["recipe"]: r for r in result["rows"]}
    assert list(rows) == ["today", "top-2 cached", "TALLRec-style step"]
    assert all(r["steps"] == 4 and r["examples"] == 32 and r["training_seconds"] > 0 for r in rows.values())
    cached = rows["top-2 cached"]
    # 4 steps over 2 fixed batches from an empty cache: each batch computed once, then replayed
    assert {k: cached["activation_cache"][k] for k in ("hits", "misses", "stored")} == {"hits": 2, "misses": 2, "stored": 2}
    assert cached["activation_cache_bytes"] > 0 and not list(tmp_path.glob("activations*"))
    assert cached["trainable_parameters"] < rows["today"]["trainable_parameters"]  # LoRA on 2 of 4 layers, no token rows
    md = out.with_suffix(".md").read_text()
    ratio = cached["examples_per_second"] / rows["TALLRec-style step"]["examples_per_second"]
    assert f"| top-2 cached | " in md and f"| {ratio:.2f} |" in md


def test_unknown_recipe_is_named(capsys):
    with pytest.raises(SystemExit):
        speed.main(["recipes", "--only", "top-3 cached"])
    assert "unknown recipe(s) ['top-3 cached']" in capsys.readouterr().err
