"""How the swappable layer classes are named, bound by gin and serialized by Keras.

Every public class is registered three ways by `register`:

* with Keras (`keras.saving.register_keras_serializable(package="resnet")`), so a saved
  model reloads without `custom_objects`;
* with gin, under its class name, *without* decorating the class. `gin.register` hands gin a
  dynamic subclass whose metaclass injects the bindings and then builds an instance of the
  original class, so Keras still sees the real constructor signature. That subclass,
  `gin.get_configurable(cls)`, is what gin passes for a reference `@BottleneckBlock`;
* in a per-kind table (`block`, `shortcut`, `stem`, `norm`), so a constructor argument such as
  `block="bottleneck"`, `block=BottleneckBlock` or gin's `@BottleneckBlock` all name the same class.

Layers that build other swappable layers take them as *specs*: a name, a class, or a dict
`{"class_name": ..., "config": {...}}`. `resolve_spec` turns any of those into a complete dict
in which every constructor argument has a value: the class default, overridden by gin's binding,
overridden by the explicit config. Nested specs (a block's `norm` and `shortcut`) are resolved
recursively. Stored in `get_config`, a complete spec rebuilds the same layer whatever gin
bindings are active when the model is loaded. An owner's settings (`overrides`: the norm a
ResNet imposes on every block) win over gin; an explicit spec value must equal them, so a spec
that says otherwise (an edited `.keras` config, say) is refused rather than silently overridden.
The spec lists the arguments its owner set under `"set_by_owner"` (omitted when there are none),
and keeps that list when it is resolved again (by a `ResidualStage` the ResNet passes it to).

`build_from_spec` constructs a layer through its gin configurable. Arguments whose spec value is
the one gin would supply anyway (its binding, or the default) are left to gin, which records them
in `gin.operative_config_str()` as it does for any configurable it calls; every other value is
passed explicitly, and so is every argument the spec says its owner set. So the operative config
lists what nested layers used (`BottleneckBlock.groups = 32`), and only that: what a spec leaves
to gin depends on the spec alone, not on what else the process built before. A spec still builds
exactly the layer it describes.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Collection, Mapping
from typing import Any

import gin
import keras

KINDS = ("block", "shortcut", "stem", "norm")

# kind -> {alias or class name -> class}
_TABLES: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
# registered class -> its gin configurable (what a gin reference `@Name` passes)
_CONFIGURABLES: dict[type, type] = {}
# Arguments that are layer bookkeeping, never part of a spec.
_BOOKKEEPING = ("self", "name", "dtype", "trainable")
# The key of a spec that lists the arguments its owner set.
SET_BY_OWNER = "set_by_owner"


def register(kind: str | None = None, *aliases: str):
    """Class decorator registering a layer with Keras, gin and (optionally) a kind table.

    Args:
        kind: One of `KINDS`, or None for classes that are not swapped by name.
        *aliases: Short names accepted besides the class name, e.g. `"bottleneck"`.

    A class may declare four attributes used by `resolve_spec`:
        `spec_args`: `{argument: kind}` for arguments that are themselves specs.
        `owner_args`: arguments its owner sets for every instance (filters, strides, ...);
            they are left out of specs and must not be bound in gin.
        `owner`: how errors name that owner, e.g. "ResidualStage".
        `stored_forms`: `{argument: function}` giving the form the class stores a value in
            (`"swish"` -> `"silu"`), so that two spellings of one value compare equal.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS} or None; received {kind!r}.")

    def decorator(cls: type) -> type:
        keras.saving.register_keras_serializable(package="resnet")(cls)
        gin.register(cls, module="resnet", allowlist=list(constructor_parameters(cls)))
        with gin.config_scope(None):  # the unscoped configurable, whatever scope is active
            _CONFIGURABLES[cls] = gin.get_configurable(cls)
        if kind is not None:
            for alias in (cls.__name__, *aliases):
                _TABLES[kind][alias] = cls
        return cls

    return decorator


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The named constructor parameters of `cls`, without `self` and `*args/**kwargs`."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def names(kind: str) -> tuple[str, ...]:
    """The names accepted for `kind`, short aliases first."""
    table = _TABLES[kind]
    aliases = [n for n in table if n != table[n].__name__]
    classes = sorted({cls.__name__ for cls in table.values()})
    return tuple(aliases + (["none"] if kind == "norm" else []) + classes)


def lookup(kind: str, value: Any, argument: str) -> type:
    """Returns the registered class of `kind` named or given by `value`.

    Accepts a name (alias or class name) or a registered class, including classes users
    register with `register(kind)`, and gin's `@BottleneckBlock` (the class's gin configurable,
    a dynamic subclass gin makes to inject bindings). An unregistered subclass is refused rather
    than mistaken for its base.
    """
    table = _TABLES[kind]
    if isinstance(value, str):
        if value in table:
            return table[value]
        raise ValueError(f"Unknown {kind} {value!r} for `{argument}`; expected one of: {', '.join(names(kind))}.")
    if inspect.isclass(value):
        registered = table.get(value.__name__)
        if registered is not None and value in (registered, _CONFIGURABLES[registered]):
            return registered
        raise ValueError(
            f"`{argument}` received class {value.__module__}.{value.__qualname__}, which is not a "
            f"registered {kind}; decorate it with `resnet.register({kind!r})` or use one of: "
            f"{', '.join(names(kind))}."
        )
    if isinstance(value, keras.layers.Layer):
        raise ValueError(
            f"`{argument}` takes a {kind} class, name or spec dict, not a layer instance "
            f"(received {value.name!r}); in gin write `@{type(value).__name__}`, without `()`."
        )
    raise ValueError(f"`{argument}` must be a {kind} name, class or spec dict; received {value!r}.")


def serialize_value(value: Any) -> Any:
    """Converts a constructor argument to the JSON-friendly form stored in configs."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [serialize_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: serialize_value(v) for k, v in value.items()}
    if inspect.isclass(value):
        raise TypeError(f"Class {value.__qualname__} must be resolved to a spec before serialization.")
    return _without_sharing(keras.saving.serialize_keras_object(value))


def _without_sharing(config: Any) -> Any:
    """A copy of a serialized object without Keras' `shared_object_id` marks.

    While a model is saved or loaded, Keras marks the config of an object whose `id` it has seen
    before, and then marks the earlier config too, in place. Short-lived objects (an initializer
    made only to be serialized) reuse ids by chance, so a stored value would change after the
    fact and compare unequal to the same value. These configs are values: they share nothing.
    """
    if isinstance(config, Mapping):
        return {key: _without_sharing(value) for key, value in config.items() if key != "shared_object_id"}
    if isinstance(config, list):
        return [_without_sharing(value) for value in config]
    return config


def gin_bindings(cls: type) -> dict[str, Any]:
    """The gin bindings of `cls` in the current scope (empty if gin does not know the class)."""
    try:
        return gin.get_bindings(cls)
    except ValueError:
        return {}


def check_unbound(cls: type, arguments, owner: str) -> None:
    """Raises if gin binds any of `arguments` of `cls`, which `owner` sets itself."""
    clash = sorted(set(gin_bindings(cls)) & set(arguments))
    if clash:
        raise ValueError(
            f"gin binds {cls.__name__}.{clash[0]}, but {owner} sets `{clash[0]}` for every "
            f"{cls.__name__} it builds, so the binding would have no effect; bind it on {owner} instead."
        )


def resolve_spec(
    kind: str,
    value: Any,
    argument: str,
    overrides: Mapping[str, Any] | None = None,
    owner: str | None = None,
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Resolves a layer spec to `{"class_name": name, "config": complete_config}`.

    Args:
        kind: One of `KINDS`.
        value: A name, class, or dict with `class_name`, optional `config` and optional
            `set_by_owner` (as a resolved spec has it). For norms, `None` or `"none"` means no
            normalization and resolves to None.
        argument: The argument name reported in errors, e.g. `"BottleneckBlock.norm"`.
        overrides: Values the owner imposes (e.g. the network-wide norm a ResNet passes to
            its blocks); gin may not bind them on the class, and they are never recorded in
            the operative config as the class's (see `build_from_spec`). The spec may repeat
            them (a stored complete spec does), but only with the same value.
        owner: The owner named in errors about `overrides`.
        hints: Per overridden argument, how errors say where the owner's value comes from;
            by default "bind `Owner.argument`".

    Returns:
        The complete spec, or None for "no normalization". Its `set_by_owner` lists, sorted,
        the arguments of `overrides` and those `value` already listed.

    Raises:
        ValueError: An unknown class or argument, a binding of what the owner sets, or an
            explicit value of an overridden argument that differs from the override.
    """
    if kind == "norm" and (value is None or value == "none"):
        return None
    explicit: dict[str, Any] = {}
    set_by_owner: Any = []
    if isinstance(value, Mapping):
        if "class_name" not in value:
            raise ValueError(f"`{argument}` spec dicts need a 'class_name' key; received {dict(value)!r}.")
        explicit = dict(value.get("config") or {})
        set_by_owner = value.get(SET_BY_OWNER, [])
        value = value["class_name"]
    cls = lookup(kind, value, argument)
    params = constructor_parameters(cls)
    owner_args = set(getattr(cls, "owner_args", ()))
    spec_params = [p for p in params if p not in _BOOKKEEPING and p not in owner_args]

    unknown = sorted(set(explicit) - set(spec_params))
    if unknown:
        raise ValueError(f"`{argument}` gives {cls.__name__} unknown argument(s) {unknown}; allowed: {spec_params}.")
    if not isinstance(set_by_owner, (list, tuple)) or not all(arg in spec_params for arg in set_by_owner):
        raise ValueError(
            f"`{argument}` spec's {SET_BY_OWNER!r} must list arguments of {cls.__name__} ({spec_params}); "
            f"received {set_by_owner!r}."
        )
    _check_overrides(cls, kind, explicit, overrides or {}, argument, owner or "the owner", hints or {})
    bound = gin_bindings(cls)
    check_unbound(cls, owner_args, getattr(cls, "owner", "its owner"))
    overridden = set(overrides or {}) - set(explicit)
    if overridden:
        check_unbound(cls, overridden, owner or "the owner")

    config: dict[str, Any] = {}
    for param in spec_params:
        default = params[param].default
        if param in (overrides or {}):
            config[param] = overrides[param]
        elif param in explicit:
            config[param] = explicit[param]
        elif param in bound:
            config[param] = bound[param]
        elif default is not inspect.Parameter.empty:
            config[param] = default
        else:
            raise ValueError(f"`{argument}`: {cls.__name__} needs a value for `{param}`.")
    for param, sub_kind in getattr(cls, "spec_args", {}).items():
        if param in config:
            config[param] = resolve_spec(sub_kind, config[param], f"{cls.__name__}.{param}")
    spec = {"class_name": cls.__name__, "config": serialize_value(config)}
    set_by_owner = sorted({*set_by_owner, *(overrides or {})})
    return {**spec, SET_BY_OWNER: set_by_owner} if set_by_owner else spec


def _check_overrides(
    cls: type,
    kind: str,
    explicit: Mapping[str, Any],
    overrides: Mapping[str, Any],
    argument: str,
    owner: str,
    hints: Mapping[str, str],
) -> None:
    """Raises if `explicit` gives an argument that `overrides` sets a different value.

    Values are compared in the form `get_config` stores them (nested specs resolved, see
    `stored_forms`), so a complete spec that repeats the owner's values, as every stored spec
    does, passes.
    """
    conflicts = []
    for param in sorted(set(explicit) & set(overrides)):
        given, imposed = explicit[param], overrides[param]
        if _same_value(cls, param, given, imposed):
            continue
        hint = hints.get(param, f"bind `{owner}.{param}`")
        conflicts.append(
            f"`{argument}` spec sets {cls.__name__}.{param}={_shown(given)}, but {owner} sets "
            f"{param}={_shown(imposed)} for every {kind} ({hint})"
        )
    if conflicts:
        raise ValueError("; ".join(conflicts) + ".")


def _same_value(cls: type, param: str, a: Any, b: Any) -> bool:
    """Whether two values of argument `param` of `cls` are the same in the form `cls` stores them."""
    sub_kind = getattr(cls, "spec_args", {}).get(param)
    form = getattr(cls, "stored_forms", {}).get(param)
    try:
        if sub_kind is not None:
            argument = f"{cls.__name__}.{param}"
            a, b = resolve_spec(sub_kind, a, argument), resolve_spec(sub_kind, b, argument)
        elif form is not None:
            a, b = form(a), form(b)
        return _canonical(serialize_value(a)) == _canonical(serialize_value(b))
    except (TypeError, ValueError):  # not a valid or comparable value: not the owner's
        return False


def _shown(value: Any) -> str:
    """A value as errors show it: serialized where it can be."""
    try:
        return repr(serialize_value(value))
    except TypeError:
        return repr(value)


def spec_class(kind: str, spec: Mapping[str, Any]) -> type:
    """The class of a resolved spec."""
    return _TABLES[kind][spec["class_name"]]


def build_from_spec(kind: str, spec: Mapping[str, Any], **instance_args: Any) -> keras.layers.Layer:
    """Instantiates a resolved spec, adding the per-instance arguments its owner sets.

    The layer is built through its gin configurable. Spec values that gin would supply anyway
    (the binding, or the default) are left to gin, which records them in the operative config,
    unless the spec's owner set them; every other value is passed explicitly, so the layer is the
    spec whatever gin binds.
    """
    cls = spec_class(kind, spec)
    config = spec["config"]
    left_to_gin = _supplied_by_gin(cls, config, spec.get(SET_BY_OWNER, ()))
    # Arguments outside the spec are passed too (the owner's, or else their defaults): gin must
    # neither inject a binding of, say, `trainable`, which specs ignore, nor record a default.
    fixed = {
        param: p.default
        for param, p in constructor_parameters(cls).items()
        if param not in config and param not in instance_args and p.default is not inspect.Parameter.empty
    }
    explicit = {param: value for param, value in config.items() if param not in left_to_gin}
    return gin.get_configurable(cls)(**explicit, **fixed, **instance_args)


def _supplied_by_gin(cls: type, config: Mapping[str, Any], set_by_owner: Collection[str]) -> set[str]:
    """The arguments in `config` whose value gin would supply itself: bound to it, or the default.

    Arguments the spec's owner set (`set_by_owner`) are never among them: recorded on the class,
    they would be bindings that `resolve_spec` refuses when the operative config is parsed back.
    A value gin would supply differently, or could not compare, is not either.
    """
    params = constructor_parameters(cls)
    bound = gin_bindings(cls)
    spec_args = getattr(cls, "spec_args", {})
    supplied = set()
    for param, value in config.items():
        if param not in params or param in set_by_owner:
            continue
        gin_value = bound[param] if param in bound else params[param].default
        if gin_value is inspect.Parameter.empty:
            continue
        try:
            if param in spec_args:
                gin_value = resolve_spec(spec_args[param], gin_value, f"{cls.__name__}.{param}")
            same = _canonical(serialize_value(gin_value)) == _canonical(value)
        except (TypeError, ValueError):  # not a valid or comparable value: the spec's is passed
            continue
        if same:
            supplied.add(param)
    return supplied


def _canonical(value: Any) -> str:
    """A serialized value as text, so that `True` and `1`, or `0` and `0.0`, are told apart."""
    return json.dumps(value, sort_keys=True)


class ArgsConfigMixin:
    """`get_config` that returns every constructor argument, read from the same-named attribute.

    Subclasses keep each constructor argument, normalized, in an attribute of the same name;
    the test suite's save/load round trips check that nothing is lost.
    """

    def get_config(self) -> dict[str, Any]:
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }
        for param in constructor_parameters(type(self)):
            if param not in config:
                config[param] = serialize_value(getattr(self, param))
        return config
