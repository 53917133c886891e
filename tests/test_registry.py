import ast
import inspect
import textwrap

import pytest

from dpbench.attacks.base import ATTACKS, Attack
from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS, Method
from dpbench.models.loading import MODELS, ModelLoader
from dpbench.registry import Registry
from dpbench.tasks.base import TASKS, Task
from dpbench.unlearning.base import UNLEARNERS, Unlearner

REGISTRIES = [METHODS, TASKS, ATTACKS, MODELS, UNLEARNERS]


class Base:
    pass


def test_duplicate_name_is_a_value_error():
    reg = Registry("thing", base=Base)

    @reg.register("a")
    class A(Base):
        pass

    assert A.name == "a" and reg.get("a") is A  # the decorator names the class
    with pytest.raises(ValueError, match="already registered"):

        @reg.register("a")
        class B(Base):
            pass


def test_wrong_base_is_a_type_error():
    reg = Registry("thing", base=Base)
    with pytest.raises(TypeError):

        @reg.register("x")
        class NotBase:
            pass


def test_unknown_name_lists_close_matches_and_known_names():
    with pytest.raises(KeyError) as info:
        METHODS.get("dpsdg")
    message = str(info.value)
    assert "Did you mean dpsgd" in message and "nonprivate" in message
    assert isinstance(info.value, DpbenchError)  # the CLI prints it as one line


def test_each_registry_refuses_what_is_not_its_base_class():
    """The registry checks the base at registration (above), so its items need no isinstance check here."""
    bases = [Method, Task, Attack, ModelLoader, Unlearner]
    assert [r.base for r in REGISTRIES] == bases


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_each_registered_name_is_written_once_in_its_decorator_and_described(registry):
    """The name is greppable (`register("dpsgd")` on the class) and never assigned in the class
    body; the class's own docstring is the line `dpbench list` prints."""
    for name in registry.names():
        cls = registry.get(name)
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
        calls = [
            d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith(".register")
        ]
        assert [ast.literal_eval(c.args[0]) for c in calls] == [name], name
        assigned = [
            t.id
            for s in node.body
            if isinstance(s, ast.Assign) or (isinstance(s, ast.AnnAssign) and s.value is not None)
            for t in (s.targets if isinstance(s, ast.Assign) else [s.target])
            if isinstance(t, ast.Name)
        ]
        assert "name" not in assigned, name
        assert (vars(cls).get("__doc__") or "").strip(), f"{name} has no docstring of its own"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_its_defaults_and_refuses_an_unknown_option(name):
    cls = METHODS.get(name)
    assert cls().opts == cls.options  # defaults are accepted as they are
    with pytest.raises(DpbenchError, match="no option"):
        cls(not_an_option=1)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_implements_its_interface(name):
    TASKS.get(name)()  # an abstract method left out is a TypeError here


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_implements_its_interface(name):
    ATTACKS.get(name)()  # no score() is a TypeError here
