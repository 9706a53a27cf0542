"""Help text of the command-line tools: each option's default said once."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``argparse.ArgumentDefaultsHelpFormatter`` that adds ``(default: X)`` only where the help does not
    already say its default, and not for a default of None or False (an option without a value, a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: %(default)s)"
