"""Ciao and Epinions (Tang, Gao, Liu 2012): product ratings with category ids and a trust network.

Read from ``root/ciao-epinions-tang2012/``: ``ciao.zip`` (``ciao/rating.mat``: userid, productid,
categoryid, rating, helpfulness; ``ciao/trustnetwork.mat``) with ``catalog_ciao.txt``, and
``epinions.zip`` (``epinions/rating.mat`` without the helpfulness column) with
``catalog_epinion.txt`` (lines ``<category id> <name>``). The .mat files are read with
``scipy.io.loadmat`` straight from the zip. No timestamps, no review text.

Cleaning, applied in this order and reported in ``notes["cleaning"]`` (raw counts in ``notes["raw"]``):
1. ratings outside 1-5 are dropped (Ciao has 34 rows rated 0: not a star value);
2. duplicate (user, product) rows: the last row in file order is kept. There is no timestamp to
   say which is newer; the files list each user's rows together and a later row is, if anything,
   the later crawl. (After step 1 — Ciao: 1,249 pairs, 1,433 rows dropped, 455 pairs with
   differing ratings; Epinions: 6,886 pairs, 9,826 rows dropped, 3,242 differing.)
3. users and products are those of the remaining ratings (Ciao loses 18 products rated only 0);
4. trust edges: self-loops, then edges naming a user without ratings, then repeated edges (the
   first is kept) are dropped (Ciao: none; Epinions: 224, 96 (one user), 27).
Products listed under several category ids (after cleaning: Ciao 99, Epinions 561) keep all of
them, most frequent first (ties by id); the title names the first. Ciao's category 10 reads "Ciao Caf?" in
the catalog (a lost "é"); it is restored to "Ciao Café".
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io

from mtrec.data.errors import DataError
from mtrec.data.readers import Source, read_text, require_sources, zip_member
from mtrec.data.records import Item, RecDataset, User
from mtrec.data.registry import register

FOLDER = "ciao-epinions-tang2012"
RATING_SCALE = (1.0, 5.0)
_CATEGORY_FIXES = {"Ciao Caf?": "Ciao Café"}


@register("ciao")
def load_ciao(root: Path, download: bool = False) -> RecDataset:
    """Ciao from ``root/ciao-epinions-tang2012/`` (ciao.zip, catalog_ciao.txt); see the module doc.

    Args:
        root: the data folder.
        download: accepted like every loader's, but mtrec knows no official URL for these files.
    """
    return _load(root, "ciao", "Ciao", "catalog_ciao.txt", download)


@register("epinions")
def load_epinions(root: Path, download: bool = False) -> RecDataset:
    """Epinions from ``root/ciao-epinions-tang2012/`` (epinions.zip, catalog_epinion.txt); see `load_ciao`."""
    return _load(root, "epinions", "Epinions", "catalog_epinion.txt", download)


def _load(root: Path, name: str, site: str, catalog_file: str, download: bool) -> RecDataset:
    folder = Path(root) / FOLDER
    hint = (
        ("download=True cannot help here: " if download else "")
        + "mtrec knows no official download URL for these files; get them from the authors' "
        "trust data sets page (Jiliang Tang) and place them as listed."
    )
    src = require_sources(folder, name, [f"{name}.zip", catalog_file], hint=hint)
    archive = src[f"{name}.zip"].path
    rating_source = _member(archive, "rating.mat", name)
    ratings = _read_mat(rating_source, "rating", min_columns=4)
    trust = _read_mat(_member(archive, "trustnetwork.mat", name), "trustnetwork", min_columns=2)
    categories = _read_catalog(src[catalog_file])
    users, items, cols, notes = _clean_ratings(
        ratings[:, :4], categories, src[catalog_file], site, rating_source
    )
    src_idx, dst_idx, trust_notes = _clean_trust(trust[:, :2], users)
    notes["raw"]["trust rows"] = len(trust)
    notes["cleaning"] += trust_notes
    return RecDataset(
        name,
        [User(str(u)) for u in users],
        items,
        cols["user"],
        cols["item"],
        cols["rating"],
        None,
        explicit=True,
        social_src=src_idx,
        social_dst=dst_idx,
        social_kind="trust",
        categories=list(categories.values()),
        rating_scale=RATING_SCALE,
        notes=notes,
    )


def _member(archive: Path, filename: str, name: str) -> Source:
    member = zip_member(archive, filename)
    if member is None:
        raise DataError(
            archive, f"no {filename} inside; expected {name}/rating.mat and {name}/trustnetwork.mat"
        )
    return Source(archive, member)


def _read_mat(source: Source, variable: str, min_columns: int) -> np.ndarray:
    """The integer matrix `variable` of a MATLAB file inside a zip."""
    data = source.read_bytes()
    problem, names = _check_mat(data, variable)
    if problem:
        raise DataError(source, f"not a readable MATLAB .mat file ({problem})")
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), variable_names=[variable])
    except Exception as exc:  # noqa: BLE001 - scipy's reader is not hardened: any error = unreadable bytes
        raise DataError(source, f"not a readable MATLAB .mat file ({exc})") from None
    value = mat.get(variable)
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[1] < min_columns:
        found = ", ".join(k for k in (mat if names is None else names) if not k.startswith("__")) or "none"
        raise DataError(
            source,
            f"expected a matrix {variable!r} with at least {min_columns} columns; variables found: {found}",
        )
    if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
        raise DataError(source, f"{variable!r} holds {value.dtype}; expected integers")
    if not np.issubdtype(value.dtype, np.integer):
        bad = ~np.isfinite(value) | (np.round(value) != value) | (np.abs(value) >= 2.0**63)
        if bad.any():
            row, column = (int(k[0]) for k in np.nonzero(bad))
            where = f"row {row + 1}, column {column + 1}"
            raise DataError(source, f"{variable!r} holds {value[row, column]} ({where}); expected integers")
    return value.astype(np.int64)


# scipy's v5 reader looks the type code of an array's data element up in a C table without a range
# check: a corrupt code crashes the process instead of raising (scipy PR #25349, not merged). So the
# variable to be read is checked first, following scipy's reader through the file; all else (v4 and
# v7.3 files, cut-off or malformed headers) is left to scipy, which raises on it.
_MAT_DATA_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})  # miINT8 .. miUTF32 less gaps
_MAT_NUMERIC_CLASSES = frozenset(range(6, 16))  # mxDOUBLE_CLASS .. mxUINT64_CLASS
_MI_MATRIX, _MI_COMPRESSED, _MX_OPAQUE = 14, 15, 17


def _check_mat(data: bytes, variable: str) -> tuple[str | None, list[str] | None]:
    """(why scipy must not read `variable` from the .mat bytes `data`, else None; variable names or None)."""
    if len(data) < 128 or 0 in data[:4] or data[124 + (data[126] == ord("I"))] != 1:
        return None, None  # not a v5 file
    order = "<" if data[126:128] == b"IM" else ">"
    names: list[str] = []
    checked, pos = False, 128
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from(order + "2I", data, pos)
        stream, at, pos = data, pos + 8, pos + 8 + size
        if kind == _MI_COMPRESSED:
            try:
                stream, at = zlib.decompress(data[at:pos]), 8
            except zlib.error as exc:
                return f"damaged compressed variable ({exc})", names
            kind = struct.unpack_from(order + "I", stream)[0] if len(stream) >= 8 else None
        if kind != _MI_MATRIX or size == 0 or at + 16 > len(stream):
            break  # scipy raises here
        flags = struct.unpack_from(order + "I", stream, at + 8)[0]  # after the flags' own tag
        mclass, is_complex = flags & 0xFF, flags >> 11 & 1
        if mclass == _MX_OPAQUE:  # no dimensions or name
            continue
        _, _, at = _mat_element(stream, at + 16, order)  # dimensions
        _, name, at = _mat_element(stream, at, order)
        if name is None:
            break
        names.append(name.decode("latin-1"))
        if names[-1] != variable or checked:
            continue
        checked = True
        if mclass not in _MAT_NUMERIC_CLASSES:
            return f"{variable!r} is not a numeric matrix (MATLAB class code {mclass})", names
        for _ in range(1 + is_complex):
            code, _, at = _mat_element(stream, at, order)
            if code is not None and code not in _MAT_DATA_TYPES:
                return f"{variable!r} has data of the unknown type code {code}", names
    return None, names


def _mat_element(stream: bytes, at: int, order: str) -> tuple[int | None, bytes | None, int]:
    """(type code, data, position after it) of the data element at `at`; (None, None, at) if cut off."""
    if at + 8 > len(stream):
        return None, None, at
    tag, size = struct.unpack_from(order + "2I", stream, at)
    if tag >> 16:  # small data element: size and type share 4 bytes, the data the next 4
        return tag & 0xFFFF, stream[at + 4 : at + 4 + (tag >> 16)], at + 8
    end = at + 8 + size
    return tag, stream[at + 8 : end], end + (-size % 8)


def _read_catalog(source: Source) -> dict[int, str]:
    """Category id -> name, from lines ``<id> <name>``."""
    categories = {}
    for line_no, line in enumerate(
        read_text(source, "latin-1", "lines '<category id> <name>'").split("\n"), 1
    ):
        if not line.strip():
            continue
        code, _, label = line.strip().partition(" ")
        if not (code.isascii() and code.isdigit()) or not label.strip():  # "²".isdigit() holds
            raise DataError(
                source, f"expected '<category id> <name>' (e.g. '1 DVDs'), found {line.strip()!r}", line_no
            )
        if len(code) > 18:
            raise DataError(source, f"category id {code[:24]}... is too large; expected below 10^18", line_no)
        label = label.strip()
        categories[int(code)] = _CATEGORY_FIXES.get(label, label)
    return categories


def _clean_ratings(
    rows: np.ndarray, categories: dict[int, str], catalog: Source, site: str, source: Source
) -> tuple[np.ndarray, list[Item], dict[str, np.ndarray], dict]:
    """Apply cleaning steps 1-3; return user ids, items, interaction columns and notes."""
    user, product, category, rating = rows.T
    raw = {
        "rating rows": len(rows),
        "users": _n_unique(user),
        "products": _n_unique(product),
        "categories": _n_unique(category),
    }
    unknown = np.setdiff1d(category, list(categories))
    if len(unknown):
        raise DataError(catalog, f"category id {unknown[0]} occurs in the ratings but is not listed here")
    cleaning = []
    valid = (rating >= RATING_SCALE[0]) & (rating <= RATING_SCALE[1])
    if not valid.all():
        values = ", ".join(str(v) for v in np.unique(rating[~valid]))
        cleaning.append(f"dropped {int((~valid).sum()):,} ratings outside 1-5 (value {values})")
        user, product, category, rating = (a[valid] for a in (user, product, category, rating))
    if not len(rating):
        raise DataError(
            source, "no rating in 1-5; expected rows (user id, product id, category id, rating, ...)"
        )
    # Pair keys from dense codes: raw ids may be negative or huge, and user * (max + 1) + product collided.
    product_values, product_code = np.unique(product, return_inverse=True)
    key = np.unique(user, return_inverse=True)[1] * len(product_values) + product_code
    keep, pairs, extra, disagree = _last_of_duplicates(key, rating)
    if extra:
        cleaning.append(
            f"{pairs:,} (user, product) pairs occur more than once ({disagree:,} with differing ratings): "
            f"kept the last row in file order, dropped {extra:,} rows"
        )
        user, product, category, rating = (a[keep] for a in (user, product, category, rating))
    users, user_idx = np.unique(user, return_inverse=True)
    products, item_idx = np.unique(product, return_inverse=True)
    for label, before, after in (
        ("users", raw["users"], len(users)),
        ("products", raw["products"], len(products)),
    ):
        if after < before:
            cleaning.append(f"{before - after:,} {label} had no rating left and were dropped")
    items, multi = _items(products, item_idx, category, categories, site)
    if multi:
        cleaning.append(
            f"{multi:,} products appear under several categories: all are kept, most frequent first"
        )
    columns = {"user": user_idx, "item": item_idx, "rating": rating.astype(np.float32)}
    return users, items, columns, {"raw": raw, "cleaning": cleaning}


def _last_of_duplicates(key: np.ndarray, rating: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """Rows to keep (the last of each key, in file order) and counts: repeated keys, extra rows,
    keys whose ratings differ."""
    _, first_from_end = np.unique(key[::-1], return_index=True)
    keep = np.sort(len(key) - 1 - first_from_end)
    order = np.argsort(key, kind="stable")
    sorted_key, sorted_rating = key[order], rating[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    differ = np.minimum.reduceat(sorted_rating, starts) != np.maximum.reduceat(sorted_rating, starts)
    return keep, int((sizes > 1).sum()), int(len(key) - len(keep)), int(differ.sum())


def _items(
    products: np.ndarray, item_idx: np.ndarray, category: np.ndarray, names: dict[int, str], site: str
) -> tuple[list[Item], int]:
    """One Item per product with its categories (most frequent first); also how many have several."""
    codes, category_code = np.unique(category, return_inverse=True)
    pairs, counts = np.unique(item_idx * len(codes) + category_code, return_counts=True)
    pair_item, pair_cat = pairs // len(codes), codes[pairs % len(codes)]
    order = np.lexsort((pair_cat, -counts, pair_item))  # by item, then most frequent, then id
    per_item: list[list[str]] = [[] for _ in products]
    for k in order.tolist():
        per_item[pair_item[k]].append(names[int(pair_cat[k])])
    items = [_product_item(str(pid), cats, site) for pid, cats in zip(products.tolist(), per_item)]
    return items, sum(len(c) > 1 for c in per_item)


def _product_item(product_id: str, categories: list[str], site: str) -> Item:
    if len(categories) == 1:
        text = f"A product in the {categories[0]} category on {site}."
    else:
        text = f"A product in the {', '.join(categories[:-1])} and {categories[-1]} categories on {site}."
    # the title and text only restate the id and categories: nothing to encode beyond the categories
    return Item(product_id, f"{categories[0]} product {product_id}", text, tuple(categories), described=False)


def _clean_trust(edges: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Step 4: drop self-loops, edges naming users without ratings, then repeats (first kept)."""
    source, target = edges.T
    cleaning = []
    loop = source == target
    if loop.any():
        cleaning.append(f"dropped {int(loop.sum()):,} self-trust rows")
        source, target = source[~loop], target[~loop]
    known_source, known_target = np.isin(source, users), np.isin(target, users)
    unknown = ~(known_source & known_target)
    if unknown.any():
        strangers = _n_unique(np.r_[source[~known_source], target[~known_target]])
        cleaning.append(
            f"dropped {int(unknown.sum()):,} trust rows naming a user without ratings "
            f"({strangers:,} distinct user id{'s' if strangers != 1 else ''})"
        )
        source, target = source[~unknown], target[~unknown]
    source, target = np.searchsorted(users, source), np.searchsorted(users, target)  # users is sorted
    _, first = np.unique(source * len(users) + target, return_index=True)
    if len(first) < len(source):
        cleaning.append(f"dropped {len(source) - len(first):,} repeated trust rows (the first is kept)")
        first = np.sort(first)
        source, target = source[first], target[first]
    return source, target, cleaning


def _n_unique(values: np.ndarray) -> int:
    return len(np.unique(values))
