"""New data for `mtrec.update` tests (a plain module, like tests_paths)."""


def new_data(folder, split, takers: list[tuple[str, float]], categories: str = "jazz"):
    """`folder` holding every validation interaction of `split` and one new item, ``new-1`` (in
    `categories`), taken after the data set's last timestamp by each (user id, rating) of `takers`,
    one second apart."""
    from mtrec.update import write_interactions

    ds = split.dataset
    write_interactions(folder, ds, split.valid)
    t = int(ds.timestamps.max()) + 100
    with open(folder / "interactions.csv", "a", encoding="utf-8") as f:
        f.writelines(f"{user},new-1,{rating},{t + n}\n" for n, (user, rating) in enumerate(takers))
    (folder / "items.csv").write_text(
        f"item_id,title,text,categories\nnew-1,A new record,Fresh.,{categories}\n", encoding="utf-8")
    return folder
