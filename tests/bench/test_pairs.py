"""`python -m mtrec.bench pairs`: paired intervals between rows of two result files."""

import json

from mtrec.bench import pairs


def _result(path, label, ranks, split="s1"):
    rec = {"rank_user": list(range(len(ranks))), "rank": ranks}
    body = {"baselines": {}, "mtrec": {label: {"test": {"records": rec}}}, "split": {"fingerprint": split}}
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_rows_of_two_files_pair_by_user(tmp_path, capsys):
    # the row hits the top-1 for every user, the reference never reaches the top 10: HR@10 +1 exactly
    a = _result(tmp_path / "a.json", "mtrec multi-task", [50] * 40)
    b = _result(tmp_path / "b.json", "mtrec multi-task", [0] * 40)
    assert pairs.main([f"{a}:mtrec multi-task", f"{b}:mtrec multi-task", "--metrics", "hr@10", "ndcg@10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"hr@10: {b}:mtrec multi-task better") and "+1.0000 [+1.0000, +1.0000], 40 users" in out[0]
    assert "+1.0000" in out[1]  # NDCG@10 of rank 0 is 1


def test_bad_arguments_name_the_problem(tmp_path, capsys):
    a = _result(tmp_path / "a.json", "x", [1, 2])
    b = _result(tmp_path / "b.json", "x", [1, 2], split="other")
    assert pairs.main([f"{a}:x", f"{b}:x"]) == 2
    assert "another split" in capsys.readouterr().err
    assert pairs.main([f"{a}:y", f"{a}:x"]) == 2
    assert "no row 'y'" in capsys.readouterr().err
    assert pairs.main([str(a), f"{a}:x"]) == 2
    assert "RESULT.json:ROW" in capsys.readouterr().err
