"""``medpipe <stage> [--config params.yaml] [hydra overrides...]``.

Each stage lives in ``medpipe.stages.<name>`` and exposes ``run(cfg, **options)``; this module only
parses arguments, composes the config and turns user-facing errors into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medpipe.errors import MedpipeError

log = logging.getLogger("medpipe")


@dataclass(frozen=True)
class Command:
    """One sub-command: its stage module, help text, and extra argparse options."""

    module: str
    help: str
    options: Callable[[argparse.ArgumentParser], None] = field(default=lambda p: None)
    needs_config: bool = True


def _fetch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="fetch again even if verified files exist")


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default models/<name>/best.ckpt)")


def _predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint to use (default models/<name>/best.ckpt)")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--output", help="output folder (default predictions/<name>/)")


def _submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--competition", required=True, help="Kaggle competition slug")
    p.add_argument("--file", required=True, help="submission CSV to send")
    p.add_argument("--message", required=True, help="submission message")
    p.add_argument("--sample-submission", help="sample_submission.csv to validate against")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would be sent")


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint to export (e.g. models/<name>/best.ckpt)")
    p.add_argument(
        "--format", default="onnx", choices=["onnx", "torchscript"], help="export format"
    )
    p.add_argument("--output", help="output file (default beside the checkpoint)")
    p.add_argument(
        "--input-size", type=int, help="input height/width (default from the checkpoint)"
    )


COMMANDS: dict[str, Command] = {
    "config": Command("medpipe.stages.show_config", "print the composed, resolved config (YAML)"),
    "fetch": Command(
        "medpipe.stages.fetch", "fetch data/raw/<dataset> from upstream or a mirror", _fetch_options
    ),
    "prepare": Command(
        "medpipe.stages.prepare",
        "decode raw images once into data/processed/<dataset>",
        _fetch_options,
    ),
    "train": Command("medpipe.stages.train", "train; best checkpoint -> models/<name>/best.ckpt"),
    "evaluate": Command(
        "medpipe.stages.evaluate",
        "test metrics -> metrics/<name>.json, plots -> reports/<name>/",
        _evaluate_options,
    ),
    "predict": Command(
        "medpipe.stages.predict",
        "predictions (and Kaggle files) -> predictions/<name>/",
        _predict_options,
    ),
    "submit": Command(
        "medpipe.stages.submit",
        "validate and submit a CSV to Kaggle",
        _submit_options,
        needs_config=False,
    ),
    "export": Command(
        "medpipe.stages.export",
        "export a checkpoint to ONNX or TorchScript",
        _export_options,
        needs_config=False,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medpipe",
        description="Medical-imaging pipeline stages. Example: medpipe train experiment=pneumonia_resnet18 "
        "trainer.max_epochs=3",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.needs_config:
            p.add_argument(
                "-c",
                "--config",
                metavar="FILE",
                help="use this resolved config (e.g. params.yaml written by DVC) instead of composing conf/",
            )
            p.add_argument(
                "overrides", nargs="*", help="Hydra overrides, e.g. model=cnn trainer.max_epochs=3"
            )
        cmd.options(p)
    return parser


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    cmd = COMMANDS[args.command]
    options: dict[str, Any] = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "verbose", "config", "overrides")
    }
    try:
        stage = importlib.import_module(cmd.module)
        if cmd.needs_config:
            from medpipe.config import compose

            cfg = compose(args.overrides, params_file=args.config)
            stage.run(cfg, **options)
        else:
            stage.run(**options)
    except MedpipeError as exc:
        if args.verbose:
            raise
        print(f"medpipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # NaN/inf loss, raised by the tasks with the step named
        print(f"medpipe {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"medpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if isinstance(exc, MisconfigurationException) and not args.verbose:
            print(f"medpipe {args.command}: error: bad trainer setting: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
