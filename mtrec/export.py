"""`python -m mtrec.export RUN --out DIR`: a run folder as one plain model folder for serving.

The LoRA weights and the trained instruction-token rows are merged into the backbone (peft's
`merge_and_unload`), so the export needs neither peft nor the base backbone: ::

    manifest.json     format "mtrec-export", what was exported from, pooling, instruction tokens
    backbone/         the merged backbone (transformers `save_pretrained`, safetensors)
    heads.safetensors the task heads with their item table, factors and offsets
    tokenizer/ prompts/ catalog/ config.yaml metrics.json   as in the run folder

`Recommender.from_run(DIR)` loads it (`precision="int8"` for a dynamically quantised CPU model;
see `mtrec.run.quantize_int8`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import mtrec
from mtrec.cli import exit_with
from mtrec.run import EXPORT_FORMAT, RunFolderError, check_run_dir, prepare_run_dir

COPIED = ("tokenizer", "prompts", "catalog", "config.yaml", "metrics.json")


def export_run(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Merge `run_dir`'s adapter into its backbone and write the export folder `out`.

    Raises:
        RunFolderError: `run_dir` is not a complete run folder (or already an export), or `out`
            exists and is not empty (without `overwrite`).
    """
    from safetensors.torch import save_file

    from mtrec.inference import Recommender

    run_dir, out = Path(run_dir), Path(out)
    manifest = check_run_dir(run_dir)
    if manifest.get("format") == EXPORT_FORMAT:
        raise RunFolderError(f"{run_dir} is already an export (of {manifest.get('exported_from')})")
    if out.resolve() == run_dir.resolve():
        raise RunFolderError(f"--out {out} is the run folder itself; choose a new folder")
    prepare_run_dir(out, overwrite)
    rec = Recommender.from_run(run_dir, device="cpu")  # fp32: the merge is exact up to rounding
    merged = rec.model  # RecModel: LoRA and token rows folded in, trained heads kept
    merged.backbone.save_pretrained(out / "backbone", safe_serialization=True)
    heads = {name: t.detach().contiguous() for name, t in merged.heads.state_dict().items()}
    save_file(heads, str(out / "heads.safetensors"))
    for name in COPIED:
        src = run_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        else:
            shutil.copy2(src, out / name)
    exported = {
        "format_version": manifest["format_version"],
        "format": EXPORT_FORMAT,
        "mtrec_version": mtrec.__version__,
        "exported_from": str(run_dir),
        "pooling": manifest["pooling"],
        "token_ids": manifest.get("token_ids", {}),
        "exported_at": time.time(),
        "files": ["manifest.json", "backbone", "heads.safetensors", *COPIED],
    }
    (out / "manifest.json").write_text(json.dumps(exported, indent=1), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mtrec.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="the run folder to export")
    p.add_argument("--out", type=Path, required=True, help="the export folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        out = export_run(args.run, args.out, args.overwrite)
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"exported {args.run} -> {out} ({size / 2**20:.0f} MiB, {time.perf_counter() - start:.1f} s); "
        f"load it with Recommender.from_run({str(out)!r}) or python -m mtrec.serve --run {out}"
    )
    return 0


if __name__ == "__main__":
    exit_with(main)
