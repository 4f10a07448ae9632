# Copyright 2026 The cityseg_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""What every command-line tool shares: one error line and exit code 2 for bad input."""

import argparse
import logging
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

from cityseg_ros.errors import CitysegError

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # argparse's own code for usage errors


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make usage errors one stderr line (argparse prints the whole usage first), exit 2.

    Sub-command parsers get the same treatment.
    """
    def error(message: str) -> None:
        parser.exit(EXIT_BAD_INPUT, f'{parser.prog}: error: {_one_line(message)} '
                                    f'(see {parser.prog} --help)\n')

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:  # argparse has no public accessor for sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_line_errors(sub)


class _StdStream(logging.Handler):
    """Write records to ``sys.stdout``/``sys.stderr`` as they are at emit time (tests swap them).

    Progress (info, debug) goes to stdout, warnings and errors to stderr.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter('%(levelname)s %(name)s: %(message)s'))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + '\n')
            stream.flush()
        except Exception:  # noqa: B902 -- logging must never raise into the tool
            self.handleError(record)


def _route_logging(level: int) -> None:
    """Log progress to stdout and problems to stderr (the tools' one error line goes there too).

    Tools check every input before they build a model or write a file, so bad input gives the
    error line alone, not a warning logged on the way in front of it.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdStream):
            root.removeHandler(handler)
    root.addHandler(_StdStream())
    root.setLevel(level)


def _one_line(text: str) -> str:
    return ' '.join(str(text).split())


def run_cli(build_parser: Callable[[], argparse.ArgumentParser],
            run: Callable[[argparse.Namespace], int],
            argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, call ``run`` and turn our errors into one stderr line and exit code 2.

    Only :class:`CitysegError` is caught, and an ``OSError`` that names a path (the user's: a
    name too long, a loop of symbolic links); anything else is a bug and keeps its traceback.
    Usage errors (a bad option value) are one line too, with argparse's exit code 2.
    """
    import cv2

    from cityseg_ros.imageio import quiet_codec_messages

    parser = build_parser()
    _one_line_errors(parser)
    args = parser.parse_args(argv)
    _route_logging(logging.DEBUG if getattr(args, 'verbose', False) else logging.INFO)
    # libpng, libjpeg, libtiff and OpenCV print about bad images on stderr by themselves; the
    # error line says it (their text is logged with -v).
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    quiet = quiet_codec_messages(True)
    previous = _terminate_as_interrupt()
    try:
        return run(args)
    except CitysegError as exc:
        print(f'{parser.prog}: error: {_one_line(exc)}', file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        # One that names a path is the user's path (a name too long, a loop of links, no
        # permission) met by a check that did not expect it; anything else is a bug.
        if exc.filename is None:
            raise
        print(f'{parser.prog}: error: {_one_line(exc.filename)}: '
              f'{_one_line(exc.strerror or exc)}; pass another path', file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f'{parser.prog}: {"terminated" if isinstance(exc, Terminated) else "interrupted"}',
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        quiet_codec_messages(quiet)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (no half-written output)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _terminate_as_interrupt():
    """Make SIGTERM raise :class:`Terminated` in the main thread; return the old handler.

    By default SIGTERM ends Python at once: a bag, PNG or checkpoint being written stays
    half-written under its final name. Only the main thread can set a handler (tests may call
    a tool from another): then nothing changes and None is returned.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)
