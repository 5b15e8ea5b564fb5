"""``caffe <command> [flags]``: one entry point, commands registered by the modules that implement them.

Flags are accepted in gflags' forms, as Caffe's tool takes them: ``--name=value``, ``-name=value``,
``--name value`` and ``-name value``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from caffe.tools.registry import COMMANDS, run_command


def _load_commands() -> None:
    from caffe.tools import (  # noqa: F401  (they register themselves)
        caffe2_tools,
        classify_tools,
        compute_image_mean,
        convert_cifar_data,
        convert_imageset,
        convert_mnist_data,
        create_annoset,
        create_detectnet_db,
        detect_tools,
        device,
        download,
        draw_tools,
        export_tools,
        extract_features,
        log_tools,
        recognize_tools,
        segment_tools,
        serve_tools,
        studio_tools,
        train,
        upgrade_tools,
        zoo_tools,
    )


def usage() -> str:
    _load_commands()
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: caffe <command> <args>", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    return "\n".join(lines)


def normalize_flags(argv: Sequence[str]) -> list[str]:
    """gflags spellings to argparse's: ``-name=value`` and ``-name value`` become ``--name...``."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and not arg[1].isdigit():
            arg = "-" + arg
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 1
    if argv[0] in ("--version", "-version"):
        from caffe import __version__

        print(f"caffe version {__version__} (neocaffe)")
        return 0
    name, rest = argv[0], normalize_flags(argv[1:])
    cmd = COMMANDS.get(name)
    if cmd is None:
        print(f"caffe: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 1
    return run_command(cmd.run, rest)


def run_tool(name: str) -> Callable[[], int]:
    """A console-script entry point running ``caffe <name>`` (for Caffe's stand-alone tool names)."""

    def entry() -> int:
        return main([name, *sys.argv[1:]])

    return entry


if __name__ == "__main__":  # run through the imported module, where the commands register
    from caffe.tools.cli import main as _main

    sys.exit(_main())
