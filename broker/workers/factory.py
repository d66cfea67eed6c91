"""One factory matching each kind of worker to its class, and each action type to its worker kind."""

from __future__ import annotations

from broker.actions import WORKER
from broker.workers.cancel import CancelWorker
from broker.workers.expand import ExpandWorker
from broker.workers.launch import LaunchWorker
from broker.workers.poll import PollWorker
from broker.workers.pool import Worker
from broker.workers.stage import StageWorker

#: worker kind -> worker class
WORKER_CLASSES: dict[str, type[Worker]] = {
    "expand": ExpandWorker,
    "launch": LaunchWorker,
    "stage": StageWorker,
    "poll": PollWorker,
    "cancel": CancelWorker,
}


def worker_class(action_type: type) -> type[Worker]:
    """The worker class that performs ``action_type``."""
    return WORKER_CLASSES[WORKER[action_type]]
