"""Building models from gin: shipped config names, gin files and binding strings."""

from __future__ import annotations

import ast
import collections
import contextlib
import importlib.util
import inspect
import io
import os
import tokenize
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import gin

from resnet.model import ResNet
from resnet.registry import constructor_parameters

_CONFIG_PACKAGE = "resnet.configs"


def configs_dir() -> Path:
    """Directory holding the shipped gin configs (installed with the package as `resnet.configs`)."""
    # `resnet.configs` is a directory of gin files without `__init__.py` (a namespace package),
    # so its location comes from the import spec rather than from a module file.
    spec = importlib.util.find_spec(_CONFIG_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "configs"  # a source checkout, not installed


def _shipped(experiments: bool) -> list[str]:
    root = configs_dir()
    names = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.gin"))
    return sorted(n for n in names if n.startswith("experiments/") == experiments)


def available_configs() -> list[str]:
    """Names of the shipped model configs, e.g. `"resnet50"`, `"cifar/resnet56"`."""
    return _shipped(experiments=False)


def available_experiments() -> list[str]:
    """Names of the shipped training recipes, e.g. `"experiments/demo"` (for `resnet-train`)."""
    return _shipped(experiments=True)


def config_path(config: str | os.PathLike) -> Path:
    """Resolves a shipped config name or a path to an existing `.gin` file.

    Raises:
        ValueError: Neither a shipped config nor an existing file; the message lists the
            shipped names.
    """
    text = os.fspath(config)
    path = Path(text)
    if path.suffix == ".gin" and path.is_file():
        return path
    shipped = configs_dir() / f"{text}.gin"
    if path.suffix != ".gin" and shipped.is_file():
        return shipped
    raise ValueError(
        f"Unknown config {text!r}: not a shipped config and not an existing .gin file. "
        f"Shipped configs: {', '.join(available_configs() + available_experiments())}."
    )


# Shipped configs `include` each other by name ("resnet50.gin", "cifar/resnet20.gin"); user files
# can include them the same way, through `parse` or through gin's own `parse_config_file`.
gin.add_config_file_search_path(str(configs_dir()))


def parse(config_files: Iterable[str | os.PathLike] = (), bindings: Iterable[str] = ()) -> None:
    """Parses gin files (shipped names or paths) and binding strings into the global gin config.

    A macro (`%NAME`) may be defined in any file or binding, before or after its use; one that
    is still undefined once everything is parsed is an error here, not when gin calls a
    configurable that uses it.

    Raises:
        ValueError: An unknown config name, a gin error (syntax, unknown configurable or
            parameter), with the file and line where gin reports them, an include cycle, or an
            undefined macro, with where it is used.
    """
    macros: list[_MacroUse] = []
    for config in config_files:
        path = config_path(config)
        try:
            _parse_file(str(path), [], macros)
        except _GIN_ERRORS as error:
            raise ValueError(f"Invalid gin config {path}: {_describe(error)}") from error
    for binding in bindings:
        try:
            gin.parse_config(binding)
        except _GIN_ERRORS as error:
            raise ValueError(f"Invalid gin binding {binding!r}: {_describe(error)}") from error
        _statements(binding, lambda line: f"in the binding {line.line_content.strip()!r}", macros)
    _check_macros_defined(macros)


def _parse_file(path: str, chain: list[tuple[str, int]], macros: list[_MacroUse]) -> None:
    """Parses a gin file, and in their place the files it `include`s that `_find_include` finds.

    gin looks for an included name in the working directory before its search paths, asking each
    of its file readers in turn, and its package-resource reader logs an error for every name it
    cannot place, so an include of a shipped config by name would print "Path not found" errors.
    Parsed here, such includes never reach gin's search. Any other include is left to gin, which
    searches the paths added to it and reports, with file and line, a file it cannot find.

    Args:
        path: The file.
        chain: The files being parsed that include `path`, outermost first, each with the line of
            its include: a file among them included again is a cycle. A file included twice in
            different branches (a diamond) is parsed twice, as gin does.
        macros: Where the macros used in `path` and the files it includes are appended.
    """
    with open(path) as file:
        lines = file.readlines()
    statements = _statements(_named_text(lines, path), lambda line: f"in {path}, line {line.line_num}", macros)
    # Each gin parse has its own import context, so every piece repeats the imports above it.
    imports = {s.location.line_num - 1 for s in statements if isinstance(s, gin.config_parser.ImportStatement)}
    start = 0
    for statement in statements:
        if isinstance(statement, gin.config_parser.IncludeStatement):
            included = _find_include(statement.filename)
            if included is not None:
                include_line = statement.location.line_num - 1
                links = [*chain, (path, include_line + 1)]
                if os.path.realpath(included) in {os.path.realpath(file) for file, _ in links}:
                    cycle = " -> ".join(f"{file} (line {line})" for file, line in links)
                    raise ValueError(f"include cycle {cycle} -> {included}")
                _parse_lines(path, lines, imports, start, include_line)
                _parse_file(included, links, macros)
                start = include_line + 1
    _parse_lines(path, lines, imports, start, len(lines))


def _find_include(name: str) -> str | None:
    """The file gin's search would find for `include name` in the working directory or among the
    shipped configs, or None."""
    for candidate in (name, os.path.join(configs_dir(), name)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _parse_lines(path: str, lines: list[str], imports: set[int], start: int, stop: int) -> None:
    """Parses `lines[start:stop]` of `path`, keeping their line numbers for gin's messages."""
    above = [lines[i] if i in imports else "\n" for i in range(start)]
    gin.parse_config(_named_text(above + lines[start:stop], path))


def _named_text(lines: list[str], path: str) -> io.StringIO:
    """The text of `lines` as a file object named `path`, the name gin gives in its messages."""
    text = io.StringIO("".join(lines))
    text.name = path
    return text


class _Reference:
    """A gin reference or macro in a parsed config, kept as the text that names it."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Literal(gin.config_parser.ParserDelegate):
    """Reads references and macros as the text that names them, noting the macros' names:
    reading the statements of a config needs no configurable."""

    def __init__(self):
        self.macros: list[str] = []

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> _Reference:
        return _Reference(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name: str) -> _Reference:
        self.macros.append(macro_name)
        return _Reference(f"%{macro_name}")


def _statements(
    text: str | io.StringIO, where: Callable[[gin.config_parser.Location], str], macros: list[_MacroUse]
) -> list[Any]:
    """The statements of a gin config; appends to `macros` each macro a statement uses, and
    `where(location)` of the statement."""
    delegate = _Literal()
    statements = []
    for statement in gin.config_parser.ConfigParser(text, delegate):
        statements.append(statement)
        macros.extend(_MacroUse(name, where(statement.location)) for name in delegate.macros)
        delegate.macros.clear()
    return statements


class _MacroUse(NamedTuple):
    name: str  # as written after `%`, e.g. "CIFAR_DIR" or "scope/NAME"
    where: str  # "in x.gin, line 2" or "in the binding '...'"


def _check_macros_defined(uses: Iterable[_MacroUse]) -> None:
    """Raises a ValueError naming every macro in `uses` that the global gin config leaves undefined.

    A macro `%NAME` is what gin binds for `NAME = value` (the parameter `value` of `gin.macro` in
    scope `NAME`), or a constant registered with `gin.constant`; gin would call `gin.macro`
    without a value for any other.
    """

    def defined(name: str) -> bool:
        for key in (f"%{name}", name):  # a macro, then a constant
            try:
                gin.query_parameter(key)
                return True
            except ValueError:
                pass
        return False

    undefined = {}
    for use in uses:
        if use.name not in undefined and not defined(use.name):
            undefined[use.name] = use.where
    if undefined:
        first = next(iter(undefined))
        if len(undefined) == 1:
            raise ValueError(
                f"gin macro %{first} is used ({undefined[first]}) but never defined; define it in a gin "
                f"file or binding, e.g. `{first} = <value>`."
            )
        used = ", ".join(f"%{name} ({where})" for name, where in undefined.items())
        raise ValueError(
            f"gin macros {used} are used but never defined; define them in a gin file or binding, "
            f"e.g. `{first} = <value>`."
        )


def parse_bindings(text: str) -> dict[str, str]:
    """The bindings of a gin config, `{"scope/module.Configurable.parameter": "value"}`, read
    without running anything (no configurable need be registered).

    Parsed by gin's own parser: comments, section headers, values over several lines, scopes,
    module-qualified names, macros (`NAME = 3`, `%NAME`) and references (`@Name`, `@Name()`)
    are understood. Values are given as the repr of what gin parsed, so layout does not count.

    Raises:
        SyntaxError, tokenize.TokenError: The text is not a gin config.

    Example:

    >>> parse_bindings("ResNet.norm = @BatchNorm  # the default\\nResNet.stage_blocks = (3,\\n  4, 6, 3)")
    {'ResNet.norm': '@BatchNorm', 'ResNet.stage_blocks': '(3, 4, 6, 3)'}
    """
    bindings = {}
    for statement in gin.config_parser.ConfigParser(text, _Literal()):
        if isinstance(statement, gin.config_parser.BindingStatement):
            scope = f"{statement.scope}/" if statement.scope else ""
            name = f"{statement.selector}.{statement.arg_name}" if statement.arg_name else statement.selector
            bindings[scope + name] = repr(statement.value)
    return bindings


def configurable_parameter(key: str) -> str:
    """`scope/module.Class.param` -> `Class.param`."""
    return ".".join(key.rsplit("/", 1)[-1].split(".")[-2:])


def differing_bindings(old: str, new: str, may_differ: Collection[str] = ()) -> list[tuple[str, str, str]]:
    """The bindings in which two gin configs differ, as `(name, old value, new value)` sorted by
    name ("(not bound)" for a binding only one of them has). Comments, layout, order and module
    qualifiers that do not tell two configurables apart (`ResNet.norm` and
    `resnet.model.ResNet.norm`; gin writes the shortest unique name) do not count, nor do the
    parameters `may_differ` (`"Trainer.epochs"`, in any scope).

    Raises:
        SyntaxError, tokenize.TokenError: A text is not a gin config.
    """
    old_bindings, new_bindings = _canonical(parse_bindings(old)), _canonical(parse_bindings(new))
    return [
        (key, old_bindings.get(key, "(not bound)"), new_bindings.get(key, "(not bound)"))
        for key in sorted(old_bindings.keys() | new_bindings.keys())
        if old_bindings.get(key) != new_bindings.get(key) and configurable_parameter(key) not in may_differ
    ]


def is_current_default(key: str, value: str) -> bool:
    """Whether the binding `key = value` (gin text) sets a parameter of a registered configurable
    to the default it has in this code: what a config recorded before that parameter existed
    implicitly meant. Values that are not Python literals (references, macros) never are."""
    configurable, _, parameter = configurable_parameter(key).rpartition(".")
    try:
        cls = gin.get_configurable(configurable)
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError):
        return False
    found = constructor_parameters(cls) if isinstance(cls, type) else inspect.signature(cls).parameters
    default = found[parameter].default if parameter in found else inspect.Parameter.empty
    return default is not inspect.Parameter.empty and type(default) is type(literal) and default == literal


def _canonical(bindings: Mapping[str, str]) -> dict[str, str]:
    def short(key: str) -> str:
        scope, _, name = key.rpartition("/")
        return f"{scope}/{configurable_parameter(name)}" if scope else configurable_parameter(name)

    counts = collections.Counter(map(short, bindings))
    return {short(key) if counts[short(key)] == 1 else key: value for key, value in bindings.items()}


# What gin raises for a bad file or binding: unknown names (ValueError), syntax (SyntaxError, or
# TokenError for unclosed brackets), missing includes (IOError), bad values (TypeError).
_GIN_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, IOError, TypeError)


def _describe(error: Exception) -> str:
    if isinstance(error, tokenize.TokenError):
        message, (line, _) = error.args
        return f"syntax error: {message} (line {line})"
    if isinstance(error, SyntaxError) and error.lineno is not None:
        where = f" (in {error.filename}, line {error.lineno})" if error.filename else f" (line {error.lineno})"
        return f"syntax error: {error.msg}{where}\n    {(error.text or '').rstrip()}"
    return str(error)


@contextlib.contextmanager
def fresh_gin_config() -> Iterator[None]:
    """Clears gin's global config on entry and exit, so no binding leaks into or out of the block."""
    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()


def build(
    config: str | os.PathLike,
    bindings: Iterable[str] = (),
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ResNet:
    """Builds a `ResNet` from a shipped config name or a gin file, plus extra bindings and weights.

    Each call starts from an empty gin config and clears it afterwards, so two builds in one
    process never see each other's bindings (and bindings parsed before the call are dropped).

    Args:
        config: A shipped config name (`"resnet50"`, `"cifar/resnet56"`; see
            `available_configs()`) or a path to a `.gin` file.
        bindings: Extra gin binding strings, applied after the file, e.g.
            `["ResNet.num_classes = 10", "ResNet.norm = 'group'"]`.
        weights: Published weights by name (`"resnet50.tv2_in1k"`; see `available_weights()`),
            downloaded once and checked against their publisher's hash, or a local `.pth`,
            `.safetensors`, `.npz` (torchvision / timm) or `.h5` (keras.applications) file.
            Loading is strict: every variable gets a tensor of its shape, or nothing loads.
        cache_dir: Where named weights are cached (default: `$RESNET_WEIGHTS_DIR`, else
            `~/.keras/resnet-weights`).

    Returns:
        The built model.

    Example:

    >>> model = build("cifar/resnet20", ["ResNet.num_classes = 100"])
    >>> model.output_shape
    (None, 100)
    >>> model = build("resnet50", weights="resnet50.tv2_in1k")  # doctest: +SKIP
    """
    if isinstance(bindings, str):
        bindings = [bindings]
    if weights is not None:
        _check_weights_fit(config, weights)
    with fresh_gin_config():
        parse([config], bindings)
        model = gin.get_configurable(ResNet)()
    if weights is not None:
        from resnet.pretrained import load_weights

        load_weights(model, weights, cache_dir=cache_dir)
    return model


def _check_weights_fit(config: str | os.PathLike, weights: str | os.PathLike) -> None:
    """Refuses, before anything is built, unknown weights names, missing files, and published
    weights made for another shipped config."""
    from resnet.pretrained import weights_source

    item, _ = weights_source(weights)
    if item is not None and os.fspath(config) in available_configs() and os.fspath(config) != item.config:
        raise ValueError(
            f"The weights {item.name!r} are for the config {item.config!r}, not {os.fspath(config)!r}: "
            f"build({item.config!r}, weights={item.name!r})."
        )
