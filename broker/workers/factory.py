"""One factory matching each kind of worker to its class (``broker.actions.WORKER`` gives each action its kind)."""

from __future__ import annotations

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
