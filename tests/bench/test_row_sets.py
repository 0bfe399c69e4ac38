"""Which language-model rows the accuracy bench trains: `--lm-rows` and `--text-control`."""

import pytest

from mtrec.bench import accuracy, mtrec_suite


@pytest.fixture
def trained(monkeypatch):
    """run_all with training stubbed out: records each variant's label, overrides and unseen-prompt flag."""
    seen = []

    def fake(base, variant, run_dir, test_users, count_draws=False):
        seen.append((variant.label, variant.overrides, variant.heldout))
        return {"drawn_examples": {"rating": 8, "like": 8, "category": 8, "recommendation": 8}}

    monkeypatch.setattr(mtrec_suite, "run_variant", fake)
    monkeypatch.setattr(mtrec_suite, "kinds_for", lambda tasks, split: list(tasks))
    monkeypatch.setattr(mtrec_suite, "single_task_overrides", lambda base, task, split, drawn: ((), 8))
    monkeypatch.setattr(mtrec_suite, "variants_for", lambda split: [mtrec_suite.RANDOM_INIT])
    return seen


def test_controls_are_the_multi_task_model_its_random_init_twin_and_the_text_control(trained, tmp_path):
    out = mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="controls")
    assert list(out) == ["mtrec multi-task", "mtrec multi-task, random-init backbone",
                         "mtrec multi-task, MiniLM backbone"]
    assert trained[1][1] == ("model.random_init=true",)
    assert trained[2][1] == ("model.backbone=bundled:minilm-l6",)
    assert [t[2] for t in trained] == [True, False, False]  # the unseen-prompt pass: the multi-task model's


def test_the_unseen_prompt_pass_can_be_left_out(trained, tmp_path):
    mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="controls", unseen_prompts=False)
    assert [t[2] for t in trained] == [False, False, False]


def test_all_rows_add_the_single_task_models_and_the_control_comes_last(trained, tmp_path):
    out = mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="all", control="/m/tiny-x")
    assert list(out) == ["mtrec multi-task", "mtrec single-task rating", "mtrec single-task preference",
                         "mtrec single-task recommendation", "mtrec multi-task, random-init backbone",
                         "mtrec multi-task, tiny-x backbone"]
    assert trained[-1][1] == ("model.backbone=/m/tiny-x",)


def test_no_text_control_and_an_unknown_row_set(trained, tmp_path):
    assert list(mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="controls",
                                    control="none")) == ["mtrec multi-task", "mtrec multi-task, random-init backbone"]
    with pytest.raises(ValueError, match="rows: 'some'"):
        mtrec_suite.run_all(None, None, tmp_path, 0, rows="some")


@pytest.mark.parametrize("protocol, flag, want", [("warm", None, "all"), ("cold-items", None, "controls"),
                                                   ("short-history", None, "controls"), ("warm", "controls", "controls"),
                                                   ("cold-items", "all", "all")])
def test_the_default_row_set_follows_the_protocol(protocol, flag, want):
    argv = ["--dataset", "movielens-100k", "--protocol", protocol] + (["--lm-rows", flag] if flag else [])
    assert accuracy.lm_rows_of(accuracy.parse_args(argv)) == want


def test_a_like_only_row_counts_its_users():
    import numpy as np

    assert accuracy.users_in({"like_user": np.array([3, 3, 5]), "like_score": np.zeros(3)}) == 2
    assert accuracy.users_in({"rank_user": np.array([1]), "rating_user": np.array([2, 1])}) == 2
    assert accuracy.users_in({}) == 0


def test_multi_is_the_multi_task_model_alone(trained, tmp_path):
    out = mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="multi", unseen_prompts=False)
    assert list(out) == ["mtrec multi-task"] and [t[2] for t in trained] == [False]


def test_tasks_is_the_multi_task_model_and_the_single_task_models(trained, tmp_path):
    out = mtrec_suite.run_all(None, None, tmp_path, 0, log=lambda _: None, rows="tasks", unseen_prompts=False)
    assert list(out) == ["mtrec multi-task", "mtrec single-task rating", "mtrec single-task preference",
                         "mtrec single-task recommendation"]
    assert [t[2] for t in trained] == [False] * 4
