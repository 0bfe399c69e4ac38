"""Fine-tune mtrec: `accelerate launch train.py --config configs/quickstart.yaml [section.key=value ...]`.

The same command runs on one GPU, several GPUs or the CPU; `accelerate config` chooses how.
"""

import argparse
import sys
from pathlib import Path

from mtrec.checkpoint import NonFiniteLossError
from mtrec.config import ConfigError, help_text, load_config
from mtrec.data import DataError
from mtrec.data.registry import check_name
from mtrec.errors import UnknownNameError
from mtrec.run import RunFolderError
from mtrec.training import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys:\n" + help_text())
    parser.add_argument("--config", type=Path, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: <run.output_root>/<run.name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run folder's latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_arguments(cfg)
        run_dir = args.run_dir or Path(cfg.run.output_root) / cfg.run.name
        result = train(cfg, run_dir, overwrite=args.overwrite, resume=args.resume)
    except (ConfigError, DataError, RunFolderError, UnknownNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    final = result["final"] or result["best"]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k not in ("step", "examples", "seconds"))
    print(f"run folder: {run_dir}\nvalidation, best weights (step {final['step']}, {final['examples']} examples): {shown}")
    return 0


def check_arguments(cfg) -> None:
    """Reject an unknown data set or backbone before the run folder is made or anything loads."""
    from mtrec.model.backbone import check_backbone_spec  # imports torch: after the config is known good

    check_name(cfg.data.dataset)
    try:
        check_backbone_spec(cfg.model.backbone)
    except FileNotFoundError as e:
        raise ConfigError(f"model.backbone: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
