"""The method registry: every learning method under one name, and the only place fleet finds one.

A learning method is a subpackage of fleet/methods that registers a `Method` when it is
imported: its name (`fleet learn --method`, `fleet sim --learner-method`), the bundle
architecture its network is saved as, the policy_kind its robots record, and three factories,
each a "module:attribute" reference imported only when first used:

    network  bundle config dict -> untrained nn.Module        (robots, fleet eval, the learner)
    policy   (network, version, ServoSettings) -> Policy       (robots, fleet eval)
    learner  (LearnerConfig, torch.device) -> learner.api.Learner   (the learner only)

So a robot that loads a bundle imports the method's network and policy modules, never its
training code, and the learner loop, the bundle loader, robot_node's policy factory and
`fleet eval` look methods up here by name or by architecture; none of them names a method.
Built-in methods are found by importing every subpackage of fleet/methods; a method defined
anywhere else (a lab's own package, a test) calls `register` itself, or is listed as an entry
point in the group "fleet.methods" of its package's metadata (loaded when a name is not found).
This module sits beside the rooms, not in fleet/methods: the policy side, the learner and the
methods all import it, and it imports none of them (only by name, at lookup).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import threading
from dataclasses import dataclass
from typing import Any, Callable, Union

#: Where the built-in methods live, one subpackage each.
METHODS_PACKAGE = "fleet.methods"
#: The method `fleet learn` and `fleet sim` train when none is named.
DEFAULT_METHOD = "grasp_point"

#: A factory: the callable itself, or where to import it from ("package.module:attribute").
Ref = Union[str, Callable[..., Any]]


class MethodError(ValueError):
    """An unknown method or architecture, or a clash of names; the message says what exists."""


@dataclass(frozen=True)
class Method:
    """One learning method, as every part of fleet finds it."""

    name: str
    architecture: str  # the bundle architecture name its network is saved as
    policy_kind: str  # recorded by the attempts its policy runs
    network: Ref  # config dict (as in policy.json) -> untrained nn.Module
    policy: Ref  # (network, version, fleet.policy.factory.ServoSettings) -> Policy
    learner: Ref  # (fleet.learner.config.LearnerConfig, torch.device) -> Learner
    description: str = ""

    @classmethod
    def in_package(cls, package: str, architecture: str, policy_kind: str,
                   description: str = "") -> "Method":
        """A method laid out as fleet/methods' are: named after its package, with
        network.py:build_network, policy.py:make_policy and learner.py:make_learner."""
        return cls(name=package.rpartition(".")[2], architecture=architecture,
                   policy_kind=policy_kind, network=f"{package}.network:build_network",
                   policy=f"{package}.policy:make_policy",
                   learner=f"{package}.learner:make_learner", description=description)

    def build_network(self, config: dict[str, Any]) -> Any:
        return _resolve(self.network)(config)

    def make_policy(self, network: Any, version: int, settings: Any) -> Any:
        return _resolve(self.policy)(network, version, settings)

    def make_learner(self, config: Any, device: Any) -> Any:
        return _resolve(self.learner)(config, device)


_METHODS: dict[str, Method] = {}
_lock = threading.RLock()
_discovered = False


def _resolve(ref: Ref) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register(method: Method) -> Method:
    """Make a method known by its name and its architecture. Registering the same method again
    is a no-op (a module imported twice); another method under a taken name is an error."""
    with _lock:
        for existing in _METHODS.values():
            clash = existing.name == method.name or existing.architecture == method.architecture
            if clash and existing != method:
                raise MethodError(f"method {method.name!r} (architecture "
                                  f"{method.architecture!r}) clashes with the registered "
                                  f"{existing.name!r} ({existing.architecture!r})")
        _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Forget a method (tests that register their own)."""
    with _lock:
        _METHODS.pop(name, None)


def _discover() -> None:
    """Import every subpackage of fleet/methods once: each registers its method."""
    global _discovered
    with _lock:
        if _discovered:
            return
        _discovered = True
        package = importlib.import_module(METHODS_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
                importlib.import_module(f"{package.__name__}.{info.name}")


def _load_entry_points() -> None:
    """Methods that installed packages declare in the entry-point group "fleet.methods"."""
    for entry in importlib.metadata.entry_points(group="fleet.methods"):
        loaded = entry.load()
        if isinstance(loaded, Method):
            register(loaded)


def methods() -> dict[str, Method]:
    """Every known method by name."""
    _discover()
    with _lock:
        return dict(_METHODS)


def method_names() -> list[str]:
    return sorted(methods())


def get_method(name: str) -> Method:
    """The method registered as `name`; MethodError listing the known ones otherwise."""
    found = methods().get(name)
    if found is None:
        _load_entry_points()
        found = methods().get(name)
    if found is None:
        raise MethodError(f"unknown learning method {name!r}; choose from {method_names()}")
    return found


def by_architecture(architecture: str) -> Method:
    """The method whose bundles have this architecture (how a robot knows what a bundle is)."""
    for method in methods().values():
        if method.architecture == architecture:
            return method
    _load_entry_points()
    for method in methods().values():
        if method.architecture == architecture:
            return method
    raise MethodError(f"unknown architecture {architecture!r} (known: "
                      f"{sorted(m.architecture for m in methods().values())})")
