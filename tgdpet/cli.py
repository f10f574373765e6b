"""The ``tgdpet`` command line: a thin layer over the library API.

Each command parses options, calls one library function, and prints. Errors a
user can cause arrive as :class:`~tgdpet.errors.TgdpetError` and are printed
as one sentence on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import TgdpetError


class _Group(click.Group):
    """A click group that turns user errors into one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TgdpetError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written under the output name.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tgdpet")
def main() -> None:
    """Denoise PET images with a DnCNN, and adapt it with Targeted Gradient Descent.

    \b
    Typical use:
      tgdpet simulate data/                      # a simulated dataset to try things on
      tgdpet train data/v1 --out runs/v1         # train a denoiser
      tgdpet score-kse runs/v1/best.safetensors --phi 0.3
      tgdpet tgd-finetune runs/v1/best.safetensors data/v2 --phi 0.3 --out runs/tgd
      tgdpet n2n-online MODEL half1.nii half2.nii --phi 0.4 -o denoised.nii
      tgdpet denoise study.nii                   # uses the built-in pretrained model
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
