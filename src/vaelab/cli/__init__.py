"""The `vaelab` command: train, eval, sample, plot, compare, reproduce and data.

Errors a user can cause (missing data, corrupt files, bad options, an occupied run directory) end
with one line on stderr naming the file or option, and a non-zero exit code; so does an OSError no
layer below turned into a VaelabError (a permission, a full disk), naming its file. SIGINT and SIGTERM
stop any command with one line and exit 130 / 143 (128 + the signal): training between two steps, with a
checkpoint (training.stopping.StopRequest), everything else at once (docs/reliability.md).
parser.py holds the options, commands.py what each command does.
"""

from __future__ import annotations

import sys

from ..errors import TrainingInterrupted, VaelabError
from ..training.stopping import Signalled, signals_raise
from .commands import cmd_compare, cmd_data, cmd_eval, cmd_plot, cmd_reproduce, cmd_sample, cmd_train, use_plugins
from .parser import PLOT_KINDS, TRAIN_FLAGS, build_parser
from .paths import os_error_line

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "plot": cmd_plot, "compare": cmd_compare, "reproduce": cmd_reproduce,
            "data": cmd_data}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with signals_raise():  # else SIGTERM would end the process on the spot, leaving partial files and no line
            use_plugins(args)  # --plugin, $VAELAB_PLUGINS
            return COMMANDS[args.command](args)
    except (TrainingInterrupted, Signalled) as exc:  # exit 128 + the signal
        print(f"vaelab {args.command}: interrupted by {exc}", file=sys.stderr)
        return exc.exit_code
    except VaelabError as exc:
        print(f"vaelab {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vaelab {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the last resort: the places that write name the file more precisely
        print(f"vaelab {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "COMMANDS", "TRAIN_FLAGS", "PLOT_KINDS"]
