"""Commands derived from the stages' parameter records (`stages/params.py`).

`@derive(params=RefineParams)` replaces a command's `params` argument by one option per field of
the record (its default, help, panel and rule), and builds the record from the options given.
A record chosen by another option (`params=(PRETRAIN_METHODS, "method")`) shows each method's
default in the help and lets unset options fall back to the chosen record's own default.
Several records can feed one command (`label_gen=(LabelGenParams, names)`: the fields `names`
lists, common ones included); a field two records share is one option feeding both.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_type_hints

import typer

from fsseg_cli.options import rule_callback
from stages.core.errors import FssegError
from stages.params import Params, flag_of


@dataclasses.dataclass
class _Option:
    field: dataclasses.Field
    hint: Any
    defaults: dict[tuple[str, str | None], Any]  # (argument, choice) -> the record's default

    @property
    def uniform(self) -> bool:
        return len({repr(v) for v in self.defaults.values()}) == 1


def _targets(spec: Any) -> tuple[dict[str | None, type[Params]], str | None, tuple[str, ...] | None]:
    """(choice -> record, the option choosing it, the field names used) from a `derive` value."""
    if isinstance(spec, type):
        return {None: spec}, None, None
    first, second = spec
    if isinstance(first, dict):
        return dict(first), second, None
    return {None: first}, None, tuple(second)


def _text(value: Any) -> Any:
    """A default as the command line spells it: tuples as comma-separated lists."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _show_default(option: _Option) -> str:
    """'400 for imr-hsnet, hsnet; 473 for pspnet' for defaults that differ by choice."""
    by_value: dict[str, list[str]] = {}
    for (_, choice), value in option.defaults.items():
        by_value.setdefault("none" if value is None else str(_text(value)), []).append(choice or "")
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{value} for {', '.join(dict.fromkeys(who))}" for value, who in by_value.items())


def derive(**specs: Any) -> Callable[[Callable], Callable]:
    """Decorate a command: each keyword names one of its arguments and the record(s) behind it."""

    def decorate(command: Callable) -> Callable:
        targets = {arg: _targets(spec) for arg, spec in specs.items()}
        options: dict[str, _Option] = {}
        for arg, (classes, by, names) in targets.items():
            for choice, cls in classes.items():
                hints = get_type_hints(cls)
                for f in dataclasses.fields(cls):
                    if (names is not None and f.name not in names) or f.name == by:
                        continue
                    entry = options.setdefault(f.name, _Option(f, hints[f.name], {}))
                    entry.defaults[(arg, choice)] = f.default
        choices = {arg: set(classes) for arg, (classes, _, _) in targets.items()}

        def complete(option: _Option) -> bool:  # every choice of each record that has it has it
            held = {arg for arg, _ in option.defaults}
            return all({c for a, c in option.defaults if a == arg} == choices[arg] for arg in held)

        params = []
        for name, option in options.items():
            f = option.field
            shared = option.uniform and complete(option)
            default = next(iter(option.defaults.values())) if shared else None
            hint = str if f.metadata.get("parse") else option.hint
            flag = flag_of(f)
            if hint is bool:
                if not shared:
                    raise TypeError(f"{name}: a flag needs one default in every record")
                names = (flag if default is False else f"{flag}/--no-{flag[2:]}",)
            else:
                names = (flag,)
                hint = hint | None
            info = typer.Option(
                *names,
                help=f.metadata.get("help", ""),
                rich_help_panel=f.metadata.get("panel"),
                callback=None if hint is bool else rule_callback(f.metadata["rule"], f.metadata["parse"]),
                show_default=True if shared else _show_default(option),
            )
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=_text(default),
                    annotation=Annotated[hint, info],
                )
            )

        own = inspect.signature(command, eval_str=True)
        kept = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for n, p in own.parameters.items()
            if n not in specs
        ]
        at = next(i for i, n in enumerate(own.parameters) if n in specs)
        signature = own.replace(parameters=kept[:at] + params + kept[at:])

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in options}
            for arg, (classes, by, _) in targets.items():
                choice = kwargs.get(by) if by else None
                cls = classes[choice]
                fields = {f.name: f for f in dataclasses.fields(cls)}
                values = {}
                for name, value in given.items():
                    if value is None:
                        continue
                    if (arg, choice) not in options[name].defaults:
                        where = [c for (a, c) in options[name].defaults if a == arg]
                        if by and where:
                            flag = flag_of(options[name].field)
                            raise FssegError(
                                f"{flag} applies to --{by} {', '.join(where)} only; drop it or pass --{by} {where[0]}"
                            )
                        continue
                    values[name] = value  # text already parsed by the option's callback
                if by and by in fields:
                    values[by] = choice
                kwargs[arg] = cls(**values)
            return command(**kwargs)

        wrapper.records = targets  # for tests and docs: which record each option comes from
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return wrapper

    return decorate
