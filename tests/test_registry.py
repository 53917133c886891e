import pytest

from dpbench.attacks.base import ATTACKS, Attack
from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS, Method
from dpbench.models.loading import MODELS
from dpbench.registry import Registry
from dpbench.tasks.base import TASKS, Task


class Base:
    pass


def test_duplicate_name_is_a_value_error():
    reg = Registry("thing", base=Base)

    @reg.register("a")
    class A(Base):
        pass

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


def test_registered_name_is_written_once_on_the_class():
    for registry in (METHODS, TASKS, ATTACKS, MODELS):
        for name in registry.names():
            assert registry.get(name).name == name


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_a_method_with_valid_options(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method)
    cls()  # defaults are accepted
    with pytest.raises(DpbenchError, match="no option"):
        cls(not_an_option=1)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_is_a_task(name):
    assert issubclass(TASKS.get(name), Task)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_is_an_attack_with_a_description(name):
    cls = ATTACKS.get(name)
    assert issubclass(cls, Attack) and cls.__doc__
