"""The cancel worker: kills running attempts (their whole process group or batch job)."""

from __future__ import annotations

from broker.actions import Kill
from broker.workers.pool import Worker


class CancelWorker(Worker):
    def kill(self, action: Kill) -> None:
        self.ctx.launcher_of(action.handle).cancel(action.handle)

    HANDLERS = {Kill: kill}
