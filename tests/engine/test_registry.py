"""Every action type has exactly one owner and one worker, and both can handle it."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from broker import actions
from broker.controllers.monitoring import MonitoringController
from broker.controllers.staging import StagingController
from broker.controllers.submission import SubmissionController
from broker.workers.factory import WORKER_CLASSES

CONTROLLERS = {c.NAME: c for c in (SubmissionController, StagingController, MonitoringController)}
ACTION_TYPES = typing.get_args(actions.Action)


def worker_class(action_type: type) -> type:
    """The worker class that performs ``action_type`` (the engine only needs the kinds: tests ask per action)."""
    return WORKER_CLASSES[actions.WORKER[action_type]]


def test_every_action_type_has_exactly_one_owner_and_one_worker_kind():
    assert set(ACTION_TYPES) == set(actions.OWNER) == set(actions.WORKER)
    assert set(actions.OWNER.values()) == set(CONTROLLERS)
    assert set(actions.WORKER.values()) == set(WORKER_CLASSES)


@pytest.mark.parametrize("action_type", ACTION_TYPES, ids=lambda t: t.__name__)
def test_the_owner_hears_both_answers_and_only_its_worker_performs_it(action_type):
    owner = CONTROLLERS[actions.OWNER[action_type]]
    assert action_type in owner.ON_DONE and action_type in owner.ON_FAILED
    performers = [cls for cls in WORKER_CLASSES.values() if action_type in cls.HANDLERS]
    assert performers == [worker_class(action_type)]


@pytest.mark.parametrize("action_type", ACTION_TYPES, ids=lambda t: t.__name__)
def test_actions_are_frozen_dataclasses(action_type):
    assert dataclasses.is_dataclass(action_type)
    assert action_type.__dataclass_params__.frozen


def test_no_controller_hears_answers_for_actions_it_does_not_own():
    for name, controller in CONTROLLERS.items():
        owned = {t for t, owner in actions.OWNER.items() if owner == name}
        assert set(controller.ON_DONE) == owned and set(controller.ON_FAILED) == owned


def test_no_message_between_controllers_copies_an_action():
    """A request to do an action is the action itself, ridden on a transition (``after_commit``)."""
    from broker.controllers import messages

    def shape(cls: type) -> tuple[tuple[str, str], ...]:  # the fields, with their declared types
        return tuple((f.name, str(f.type)) for f in dataclasses.fields(cls))

    shapes = {shape(t): t.__name__ for t in ACTION_TYPES}
    copies = [f"{name} copies {shapes[shape(message)]}" for name, message in vars(messages).items()
              if isinstance(message, type) and dataclasses.is_dataclass(message)
              and message.__module__ == messages.__name__ and shape(message) in shapes]
    assert copies == []


def test_tuples_that_travel_between_actors_have_named_fields():
    from broker.controllers.messages import Resume, StagingAttempt
    from broker.persistence.changes import WorkflowSummary
    from broker.persistence.control import ControlCommand
    from broker.persistence.outcome import Outcome
    from broker.workers.poll import PollWorker

    assert typing.get_type_hints(Resume)["nodes"] == tuple[StagingAttempt, ...]
    assert typing.get_type_hints(PollWorker.poll_control)["return"] == list[ControlCommand]
    assert typing.get_type_hints(Outcome)["summaries"] == list[WorkflowSummary]
