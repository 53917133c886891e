"""The plugin registries that modules outside their packages look names up in.

Declared here, apart from the base classes, so that the run spec can ask a method for its
defaults without importing the methods (and torch) until a name is looked up: each registry
imports its plugin package on first lookup.
"""

from __future__ import annotations

from dpbench.registry import Registry

METHODS: Registry = Registry("method", base="dpbench.methods.base:Method", plugins="dpbench.methods")
TASKS: Registry = Registry("task", base="dpbench.tasks.base:Task", plugins="dpbench.tasks")
ATTACKS: Registry = Registry("attack", base="dpbench.attacks.base:Attack", plugins="dpbench.attacks")
MODELS: Registry = Registry("model", base="dpbench.models.registry:ModelLoader", plugins="dpbench.models.registry")
UNLEARNERS: Registry = Registry(
    "unlearning method", base="dpbench.unlearning.base:Unlearner", plugins="dpbench.unlearning.methods"
)
