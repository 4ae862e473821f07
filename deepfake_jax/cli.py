"""One flag style for every command: `--snake_case VALUE` (or `=VALUE`), booleans as
`--flag` / `--noflag`, `--verbose` everywhere -- the style of absl, which `main` and `search`
use for ml_collections' `--config.*` overrides. The `--kebab-case` spelling is accepted too."""

from __future__ import annotations

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's flag style (see the module docstring)."""

    def __init__(self, prog: str, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, allow_abbrev=False, **kwargs)
        self.add_bool("verbose", False, "also print the libraries' INFO lines and warnings "
                      "(orbax, jax, grain, matplotlib ...)")

    def add_argument(self, *names, **kwargs):
        for name in names:
            if name.startswith("--") and "-" in name[2:]:
                raise ValueError(f"{name}: flags are spelled --snake_case")
        aliases = [f"--{n[2:].replace('_', '-')}" for n in names
                   if n.startswith("--") and "_" in n[2:]]
        return super().add_argument(*names, *aliases, **kwargs)

    def add_bool(self, name: str, default: bool | None, help: str) -> None:
        """`--name` sets True, `--noname` False; `default` when neither is given."""
        self.add_argument(f"--{name}", dest=name, action="store_true", default=default,
                          help=help)
        super().add_argument(f"--no{name}", f"--no-{name.replace('_', '-')}", dest=name,
                             action="store_false", help=argparse.SUPPRESS)
