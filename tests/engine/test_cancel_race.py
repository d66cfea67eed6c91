"""A workflow cancelled while its payloads end: a node whose payload ended first keeps its result, and a
restart runs none of those again (the README's rule "finished -> its result is taken", through the engine).

Each round runs a workflow of :data:`NODES` nodes, each held by a FIFO of its own; the test releases them
one after the other and cancels the workflow in the middle of that, at a different point in each round,
so that kills and payload ends cross (the round that cancels first waits for a first kill, so that a kill
wins at least once however fast the releases run). Every node's first attempt then carries a verdict (its ``exit``
file): the payload's exit status if it ended first, ``cancelled`` if the kill came first. The node's
recorded state must follow it, and after a restart the node's marker shows a second run only for the
nodes that were killed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.states import WORKFLOW_TERMINAL, WorkflowState
from tests.engine.helpers import workflow
from tests.fixtures import wait_for
from tests.launchers.helpers import make_fifo, release_unless

#: nodes per workflow, and where (fraction of the nodes released) each round's cancel comes
NODES = 50
CANCEL_AT = (0.0, 0.5, 1.0)


def document(tmp: Path) -> bytes:
    # attempt 1 waits for its FIFO; the attempt a restart gives it does not
    payload = (f'echo "$WB_NODE_PATH $WB_ATTEMPT" &gt;&gt; "{tmp}/$WB_NODE_PATH.marker"\n'
               f'if [ "$WB_ATTEMPT" = 1 ]; then read x &lt; "{tmp}/$WB_NODE_PATH.fifo"; fi\n')
    return workflow("".join(f'<node id="n{i}"><payload type="sh">{payload}</payload></node>' for i in range(NODES)))


@pytest.mark.slow
def test_a_node_whose_payload_ended_before_the_cancel_keeps_its_result_and_is_not_run_again(make_broker, tmp_path):
    broker = make_broker(max_in_flight=NODES).start()
    won = {"exit": 0, "kill": 0}
    for round_no, cancel_at in enumerate(CANCEL_AT):
        tmp = tmp_path / f"round{round_no}"
        tmp.mkdir()
        fifos = [make_fifo(tmp / f"n{i}.fifo") for i in range(NODES)]
        wf = broker.submit(document(tmp))
        nodes = wait_for(lambda: (n := broker.nodes(wf)) and all(x.workdir for x in n.values()) and n,
                         what="every node to run")
        # a recorded work directory is the launch, not yet the payload: wait for each first attempt's marker,
        # so that every attempt 1 has run its first line before a cancel can kill it
        wait_for(lambda: all((tmp / f"n{i}.marker").exists() for i in range(NODES)), what="every payload to start")
        for i, fifo in enumerate(fifos):
            if i == int(cancel_at * NODES):
                broker.engine.cancel(wf, "user:alice")
                if i == 0:
                    # the cancel travels through the actors while the releases take microseconds each: a
                    # cancel before the first release could lose every race (it did, in a CI run), so this
                    # round waits for its first kill, and then the kills and the releases still cross
                    wait_for(lambda: any((Path(n.workdir) / "exit").exists() for n in nodes.values()),
                             what="the cancel's first kill")
            release_unless(fifo, (Path(nodes[f"n{i}"].workdir) / "exit").exists)
        if cancel_at == 1.0:
            broker.engine.cancel(wf, "user:alice")
        assert broker.wait(wf) in WORKFLOW_TERMINAL
        ended = broker.nodes(wf)
        killed = set()
        for path, node in ended.items():
            verdict = (Path(node.workdir) / "exit").read_text()
            if verdict == "cancelled\n":
                assert node.state == "cancelled", (path, node.state, node.message)
                killed.add(path)
            else:
                # its payload's exit status came first: its own result, never "cancelled"
                assert (verdict, node.state) == ("0\n", "succeeded"), (path, node.message)
        won["kill"] += len(killed)
        won["exit"] += NODES - len(killed)
        broker.engine.restart(wf, "user:alice")
        wait_for(lambda: broker.states.get(wf) is WorkflowState.RUNNING or broker.states.get(wf)
                 is WorkflowState.SUCCEEDED, what="the restart to be applied")
        assert broker.wait(wf) is WorkflowState.SUCCEEDED
        for path, node in broker.nodes(wf).items():
            runs = (tmp / f"{path}.marker").read_text().splitlines()
            # a node that ended by itself ran once; only the killed ones ran again, as attempt 2
            assert runs == ([f"{path} 1", f"{path} 2"] if path in killed else [f"{path} 1"]), (path, runs)
    assert won["exit"] and won["kill"]
